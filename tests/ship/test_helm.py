"""The Helm chart, rendered by Helm's own template engine (helm_python), linted strictly, and every manifest
validated against the Kubernetes OpenAPI schemas, for the default, staging and production values."""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from .conftest import ROOT, assert_bidengine_command

CHART = ROOT / "k8s" / "bidengine"
VALUES = {"default": None, "staging": "values-staging.yaml", "production": "values-production.yaml"}
# The chart's floor (EKS' oldest standard-support line when written) and a current release.
KUBE_VERSIONS = ("1.30.0", "1.34.0")
RELEASE, NAMESPACE = "bidengine", "bidengine"
# Groups of the custom resources the chart can render (Prometheus Operator, KEDA); not in Kubernetes' schemas.
CRD_GROUPS = {"monitoring.coreos.com", "keda.sh"}
AGENTS = {
    "gateway": "gateway",
    "pricing-agent": "pricing-agent",
    "audit-agent": "audit-agent",
    "monitor": "monitor",
    "console": "console",
}

Manifest = dict[str, Any]


def values_of(name: str) -> dict[str, Any]:
    file = VALUES[name]
    if file is None:
        return {}
    loaded: dict[str, Any] = yaml.safe_load((CHART / file).read_text(encoding="utf-8"))
    return loaded


def render_chart(values: dict[str, Any], chart: Path = CHART) -> list[Manifest]:
    with helm_python.Chart.load(str(chart)) as loaded:
        rendered = loaded.render(values=values, name=RELEASE, namespace=NAMESPACE)
    docs: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


@cache
def rendered(name: str) -> tuple[Manifest, ...]:
    return tuple(render_chart(values_of(name)))


def of_kind(docs: tuple[Manifest, ...] | list[Manifest], kind: str) -> dict[str, Manifest]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: tuple[Manifest, ...] | list[Manifest]) -> dict[str, dict[str, Any]]:
    return {
        f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] in {"Deployment", "StatefulSet", "Job", "DaemonSet"}
    }


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.fixture(params=list(VALUES))
def values_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


# --- Helm lint and Kubernetes schemas ------------------------------------------------------------------------


def test_lint_strict(values_name: str) -> None:
    report = helm_python.lint(str(CHART), values_of(values_name), strict=True, kube_version=f"v{KUBE_VERSIONS[0]}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems, problems
    assert not report["errors"], report["errors"]
    assert report["total_charts_linted"] == 1


@pytest.fixture
def broken_chart(tmp_path: Path) -> Path:
    copy = tmp_path / "bidengine"
    shutil.copytree(CHART, copy)
    return copy


def test_lint_catches_template_errors(broken_chart: Path) -> None:
    """The lint assertion above has teeth: a template error is reported (as data, severity 3)."""
    (broken_chart / "templates" / "broken.yaml").write_text("kind: {{ .Values.nope.missing }}\n", encoding="utf-8")
    report = helm_python.lint(str(broken_chart), {}, strict=True, kube_version=f"v{KUBE_VERSIONS[0]}")
    assert any(m["severity"] == 3 for m in report["messages"]), report


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_manifests_match_kubernetes_schemas(values_name: str, kube_version: str) -> None:
    docs = rendered(values_name)
    assert len(docs) >= 10
    failures = []
    for doc in docs:
        if doc["apiVersion"].split("/")[0] in CRD_GROUPS:
            continue  # custom resources: validated against their CRDs in test_monitoring.py
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(map(str, exc.path))
            failures.append(f"{doc['kind']}/{doc['metadata']['name']} {where}: {exc.message}")
    assert not failures, "\n".join(failures)


def test_schema_validation_has_teeth() -> None:
    deployment = dict(next(iter(of_kind(rendered("default"), "Deployment").values())))
    deployment["spec"] = {**deployment["spec"], "replicaz": 3}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


# --- Workloads -------------------------------------------------------------------------------------------------


def test_one_deployment_per_process(values_name: str) -> None:
    deployments = of_kind(rendered(values_name), "Deployment")
    assert set(deployments) == {f"{RELEASE}-{a}" for a in AGENTS}
    for agent, subcommand in AGENTS.items():
        deployment = deployments[f"{RELEASE}-{agent}"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["bidengine", subcommand]
        assert_bidengine_command(container["command"], f"Deployment {agent}")
        assert container["resources"]["requests"], agent
        assert container["resources"]["limits"], agent
        assert "livenessProbe" in container, agent
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    images = {d["spec"]["template"]["spec"]["containers"][0]["image"] for d in deployments.values()}
    assert len(images) == 1, "one image for every process"


def test_http_probes_and_ports(values_name: str) -> None:
    deployments = of_kind(rendered(values_name), "Deployment")
    components = (
        ("gateway", 8000, "/health", "/ready"),
        ("monitor", 3001, "/live", "/health"),
        ("console", 8001, "/health", "/ready"),
    )
    for agent, port, live, ready in components:
        (container,) = deployments[f"{RELEASE}-{agent}"]["spec"]["template"]["spec"]["containers"]
        assert container["ports"][0] == {"name": "http", "containerPort": port, "protocol": "TCP"}
        assert {p["name"] for p in container["ports"][1:]} <= {"metrics"}, "http, and /metrics of its own"
        assert container["livenessProbe"]["httpGet"] == {"path": live, "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": ready, "port": "http"}
        env = env_of(container)
        prefix = agent.upper()
        assert env[f"{prefix}_HOST"]["value"] == "0.0.0.0"  # noqa: S104 - must listen on the pod IP
        assert env[f"{prefix}_PORT"]["value"] == str(port)


def agent_probe(docs: tuple[Manifest, ...] | list[Manifest], agent: str, probe: str = "livenessProbe") -> list[str]:
    (container,) = of_kind(docs, "Deployment")[f"{RELEASE}-{agent}"]["spec"]["template"]["spec"]["containers"]
    command: list[str] = container[probe]["exec"]["command"]
    return command


def test_agent_probe_command_is_a_value() -> None:
    custom = ["bidengine", "probe", "audit-agent"]
    docs = render_chart(
        {
            "agentProbeCommand": custom,
            "components": {"pricingAgent": {"probeCommand": []}, "auditAgent": {"probeCommand": ["true"]}},
        }
    )
    assert agent_probe(docs, "pricing-agent") == custom  # no own probeCommand: the chart's default
    assert agent_probe(docs, "audit-agent") == ["true"]


@pytest.mark.parametrize("agent", ["pricing-agent", "audit-agent"])
def test_agent_probes_check_the_heartbeat(values_name: str, agent: str) -> None:
    """Liveness is `bidengine probe <agent>` (the heartbeat's age), readiness the same with `--ready`."""
    docs = rendered(values_name)
    liveness = agent_probe(docs, agent, "livenessProbe")
    readiness = agent_probe(docs, agent, "readinessProbe")
    assert liveness == ["bidengine", "probe", agent]
    assert readiness == ["bidengine", "probe", agent, "--ready"]
    for command, probe in ((liveness, "livenessProbe"), (readiness, "readinessProbe")):
        assert_bidengine_command(command, f"{agent} {probe}")


def probe_of(docs: tuple[Manifest, ...], component: str, probe: str) -> dict[str, Any]:
    (container,) = of_kind(docs, "Deployment")[f"{RELEASE}-{component}"]["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = container[probe]
    return found


# docs/deploy.md, "Probes and outages": the worst pause between two heartbeats of an agent riding out an outage
# is its longest bounded attempt (a PostgreSQL statement: DATABASE_COMMAND_TIMEOUT_S) plus the back-off cap.
LONGEST_ATTEMPT_S = 30.0 + 2.0
HEARTBEAT_MAX_AGE_S = 30.0  # `bidengine probe`'s default --max-age-s
FAILOVER_S = 60.0


def seconds_to_fail(probe: dict[str, Any]) -> float:
    """How long a probe must keep failing before the kubelet acts: failureThreshold checks, periodSeconds apart."""
    return float((probe["failureThreshold"] - 1) * probe["periodSeconds"])


@pytest.mark.parametrize("agent", ["pricing-agent", "audit-agent"])
def test_agent_liveness_outlives_any_outage_and_catches_a_hung_agent(values_name: str, agent: str) -> None:
    liveness = probe_of(rendered(values_name), agent, "livenessProbe")
    # An agent in an outage beats at least every LONGEST_ATTEMPT_S: that must never add up to a restart.
    assert HEARTBEAT_MAX_AGE_S + seconds_to_fail(liveness) > LONGEST_ATTEMPT_S
    # A hung agent (no beat at all) is restarted within about a minute and a half.
    assert HEARTBEAT_MAX_AGE_S + seconds_to_fail(liveness) + liveness["periodSeconds"] <= 90


def test_a_redis_failover_restarts_no_gateway_and_pulls_none_from_the_service(values_name: str) -> None:
    docs = rendered(values_name)
    # Liveness is /health, which no backend affects; readiness (/ready is 503 during the failover) must
    # keep failing longer than the failover before the pod leaves the Service.
    assert probe_of(docs, "gateway", "livenessProbe")["httpGet"]["path"] == "/health"
    assert seconds_to_fail(probe_of(docs, "gateway", "readinessProbe")) > FAILOVER_S
    assert probe_of(docs, "monitor", "livenessProbe")["httpGet"]["path"] == "/live"


@pytest.mark.parametrize("agent", ["pricing-agent", "audit-agent"])
def test_default_agent_probe_runs(agent: str, tmp_path: Path) -> None:
    """The rendered exec probe, run as the kubelet would: fails without a heartbeat file, passes with a fresh one."""
    command = agent_probe(rendered("production"), agent)
    argv = [sys.executable, "-m", "bidengine.cli", *command[1:]]
    env = {"TMPDIR": str(tmp_path)}
    missing = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert missing.returncode == 1
    assert "no heartbeat" in missing.stderr
    (tmp_path / f"bidengine-{agent}.alive").touch()
    fresh = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert fresh.returncode == 0, fresh.stderr


def test_fallback_agent_probe_checks_redis(redis_server_url: str) -> None:
    """`agentProbeCommand`, for a component without its own probeCommand: passes with Redis up, fails without."""
    docs = render_chart({"components": {"pricingAgent": {"probeCommand": []}}})
    command = agent_probe(docs, "pricing-agent")
    assert command[0] == "python"
    argv = [sys.executable, *command[1:]]
    up = subprocess.run(argv, env={"REDIS_URL": redis_server_url}, capture_output=True, timeout=30, check=False)
    assert up.returncode == 0, up.stderr
    down = subprocess.run(
        argv, env={"REDIS_URL": "redis://127.0.0.1:1/0"}, capture_output=True, timeout=30, check=False
    )
    assert down.returncode != 0


def test_security_contexts(values_name: str) -> None:
    specs = pod_specs(rendered(values_name))
    assert len(specs) >= 5
    for where, spec in specs.items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in spec["containers"] + spec.get("initContainers", []):
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["capabilities"]["drop"] == ["ALL"], where
            assert not ctx["capabilities"].get("add"), where
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp, f"{where}: no writable /tmp"
            assert tmp[0]["name"] in tmp_volumes, f"{where}: /tmp is not an emptyDir"


def test_service_account(values_name: str) -> None:
    docs = rendered(values_name)
    accounts = of_kind(docs, "ServiceAccount")
    assert set(accounts) == {RELEASE}
    for name, deployment in of_kind(docs, "Deployment").items():
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == RELEASE, name
    if values_name == "production":
        assert "eks.amazonaws.com/role-arn" in accounts[RELEASE]["metadata"]["annotations"]


# --- Scaling and availability ------------------------------------------------------------------------------------


def test_autoscalers(values_name: str) -> None:
    docs = rendered(values_name)
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    deployments = of_kind(docs, "Deployment")
    assert {f"{RELEASE}-gateway", f"{RELEASE}-pricing-agent", f"{RELEASE}-audit-agent"} <= set(hpas)
    for name, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        assert target["name"] in deployments, name
        assert "replicas" not in deployments[target["name"]]["spec"], f"{name}: the HPA owns the replica count"
        (container,) = deployments[target["name"]]["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["requests"]["cpu"], f"{name}: CPU utilisation needs a CPU request"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    gateway = hpas[f"{RELEASE}-gateway"]["spec"]
    if values_name != "staging":
        assert (gateway["minReplicas"], gateway["maxReplicas"]) == (2, 10)
    assert gateway["minReplicas"] >= 2, "the gateway stays redundant"


def test_disruption_budgets_select_pods(values_name: str) -> None:
    docs = rendered(values_name)
    pdbs = of_kind(docs, "PodDisruptionBudget")
    assert f"{RELEASE}-gateway" in pdbs
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in of_kind(docs, "Deployment").values()]
    for name, pdb in pdbs.items():
        assert pdb["apiVersion"] == "policy/v1"
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert sum(selector.items() <= labels.items() for labels in pod_labels) == 1, name
    assert pdbs[f"{RELEASE}-gateway"]["spec"]["minAvailable"] == 1


# --- Traffic -----------------------------------------------------------------------------------------------------


def test_services_and_alb_ingress(values_name: str) -> None:
    docs = rendered(values_name)
    services = of_kind(docs, "Service")
    deployments = of_kind(docs, "Deployment")
    for agent in ("gateway", "monitor", "console"):
        service = services[f"{RELEASE}-{agent}"]
        pod = deployments[f"{RELEASE}-{agent}"]["spec"]["template"]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        port_names = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names

    ingress = of_kind(docs, "Ingress")[RELEASE]
    assert ingress["spec"]["ingressClassName"] == "alb"
    annotations = ingress["metadata"]["annotations"]
    assert annotations["alb.ingress.kubernetes.io/target-type"] == "ip"
    assert annotations["alb.ingress.kubernetes.io/scheme"] in {"internet-facing", "internal"}
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    for path in paths:
        backend = path["backend"]["service"]
        assert backend["name"] == f"{RELEASE}-gateway"
        assert backend["port"]["name"] in {p["name"] for p in services[f"{RELEASE}-gateway"]["spec"]["ports"]}
    # The load balancer carries the bidders' routes only, never the metrics or the readiness details.
    assert {(p["path"], p["pathType"]) for p in paths} == {("/api/bid/", "Exact"), ("/openapi.json", "Exact")}
    if values_name == "production":
        assert "certificate-arn" in " ".join(annotations)
        assert "HTTPS" in annotations["alb.ingress.kubernetes.io/listen-ports"]


# --- Configuration, secrets, migrations, databases -------------------------------------------------------------


def test_settings_from_configmap_urls_from_secrets(values_name: str) -> None:
    docs = rendered(values_name)
    configmap = of_kind(docs, "ConfigMap")[RELEASE]  # the settings (the dashboard has a ConfigMap of its own)
    assert configmap["data"]["LOG_LEVEL"]
    for where, spec in pod_specs(docs).items():
        if where.startswith("StatefulSet/"):
            continue
        for container in spec["containers"]:
            env = env_of(container)
            for var in ("DATABASE_URL", "REDIS_URL"):
                entry = env[var]
                if "valueFrom" in entry:
                    assert "secretKeyRef" in entry["valueFrom"], f"{where}: {var}"
                else:  # in-cluster server: composed from the password Secret by the kubelet
                    assert "$(" in entry["value"], f"{where}: {var} holds a literal password"
                    password = entry["value"].split("$(")[1].split(")")[0]
                    assert "secretKeyRef" in env[password]["valueFrom"], f"{where}: {password}"
            if where.startswith("Deployment/"):
                assert {"configMapRef": {"name": configmap["metadata"]["name"]}} in container["envFrom"], where


def test_production_uses_managed_databases_from_an_existing_secret() -> None:
    docs = rendered("production")
    assert not of_kind(docs, "StatefulSet"), "no in-cluster databases in production"
    assert not of_kind(docs, "Secret"), "the URLs come from the existing Secret, not from values"
    assert not {n for n in of_kind(docs, "Service") if n.endswith(("-postgresql", "-redis"))}
    existing = values_of("production")["secrets"]["existingSecret"]
    for where, spec in pod_specs(docs).items():
        env = env_of(spec["containers"][0])
        for var in ("DATABASE_URL", "REDIS_URL"):
            assert env[var]["valueFrom"]["secretKeyRef"]["name"] == existing, f"{where}: {var}"


def test_staging_runs_databases_in_cluster() -> None:
    docs = rendered("staging")
    statefulsets = of_kind(docs, "StatefulSet")
    assert set(statefulsets) == {f"{RELEASE}-postgresql", f"{RELEASE}-redis"}
    images = {n: s["spec"]["template"]["spec"]["containers"][0]["image"] for n, s in statefulsets.items()}
    assert images[f"{RELEASE}-postgresql"].startswith("postgres:16")
    assert images[f"{RELEASE}-redis"].startswith("redis:7")
    services = of_kind(docs, "Service")
    for name, statefulset in statefulsets.items():
        (claim,) = statefulset["spec"]["volumeClaimTemplates"]
        assert claim["spec"]["resources"]["requests"]["storage"]
        assert claim["spec"]["storageClassName"] == "gp3"
        assert statefulset["spec"]["serviceName"] in services, name
    gateway = env_of(of_kind(docs, "Deployment")[f"{RELEASE}-gateway"]["spec"]["template"]["spec"]["containers"][0])
    assert f"@{RELEASE}-postgresql:5432/" in gateway["DATABASE_URL"]["value"]
    assert f"@{RELEASE}-redis:6379/" in gateway["REDIS_URL"]["value"]
    for name in (f"{RELEASE}-postgresql", f"{RELEASE}-redis"):
        secret = of_kind(docs, "Secret")[name]
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_managed_urls_from_values_need_both_urls() -> None:
    managed = {"postgresql": {"enabled": False}, "redis": {"enabled": False}}
    with pytest.raises(helm_python.HelmError, match=r"secrets\.databaseUrl"):
        render_chart(managed)
    urls = {"databaseUrl": "postgresql://u:p@db.example:5432/bid", "redisUrl": "rediss://:t@cache.example:6379/0"}
    docs = render_chart({**managed, "secrets": urls})
    secret = of_kind(docs, "Secret")[f"{RELEASE}-urls"]
    assert secret["stringData"] == {"DATABASE_URL": urls["databaseUrl"], "REDIS_URL": urls["redisUrl"]}
    assert "pre-install" in secret["metadata"]["annotations"]["helm.sh/hook"], "exists before the migration hook"


@pytest.mark.parametrize(
    ("values_name", "hooks"),
    [("production", "pre-install,pre-upgrade"), ("staging", "post-install,pre-upgrade")],
)
def test_migrations_hook_job(values_name: str, hooks: str) -> None:
    """A hook Job before each upgrade; on the first install with an in-cluster database it has to come after
    the release's resources (the database) exist."""
    (job,) = of_kind(rendered(values_name), "Job").values()
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == hooks
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["bidengine", "migrate"]
    assert_bidengine_command(container["command"], "migration Job")
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert "DATABASE_URL" in env_of(container)


def test_values_files_documented() -> None:
    deploy_doc = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    for file in filter(None, VALUES.values()):
        assert (CHART / file).is_file()
        assert f"k8s/bidengine/{file}" in deploy_doc, f"docs/deploy.md does not show the install with {file}"


# --- The console ------------------------------------------------------------------------------------------------


def console_container(docs: tuple[Manifest, ...] | list[Manifest]) -> dict[str, Any]:
    (container,) = of_kind(docs, "Deployment")[f"{RELEASE}-console"]["spec"]["template"]["spec"]["containers"]
    return container


def test_console_session_key_is_a_kept_generated_fernet_key() -> None:
    from cryptography.fernet import Fernet

    docs = rendered("default")
    secret = of_kind(docs, "Secret")[f"{RELEASE}-console"]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    key = secret["stringData"]["CONSOLE_SESSION_KEY"]
    Fernet(key)  # raises unless urlsafe base64 of 32 bytes
    assert key != of_kind(render_chart({}), "Secret")[f"{RELEASE}-console"]["stringData"]["CONSOLE_SESSION_KEY"]
    env = env_of(console_container(docs))
    assert env["CONSOLE_SESSION_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{RELEASE}-console",
        "key": "CONSOLE_SESSION_KEY",
    }
    assert env["CONSOLE_TRUST_FORWARDED"]["value"] == "true", "behind the ALB"
    assert "CONSOLE_SESSION_KEY" not in of_kind(docs, "ConfigMap")[RELEASE]["data"]


def test_production_console_key_from_the_existing_secret() -> None:
    docs = rendered("production")
    env = env_of(console_container(docs))
    existing = values_of("production")["secrets"]["existingSecret"]
    assert env["CONSOLE_SESSION_KEY"]["valueFrom"]["secretKeyRef"]["name"] == existing
    assert f"{RELEASE}-console" not in of_kind(docs, "Secret")


@pytest.mark.parametrize("values_name", ["staging", "production"])
def test_console_ingress_is_internal_and_https(values_name: str) -> None:
    docs = rendered(values_name)
    ingress = of_kind(docs, "Ingress")[f"{RELEASE}-console"]
    annotations = ingress["metadata"]["annotations"]
    assert annotations["alb.ingress.kubernetes.io/scheme"] == "internal", "never internet-facing"
    assert "HTTPS" in annotations["alb.ingress.kubernetes.io/listen-ports"]
    assert annotations["alb.ingress.kubernetes.io/ssl-redirect"] == "443"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{RELEASE}-console", "port": {"name": "http"}}


def test_console_ingress_off_by_default() -> None:
    assert set(of_kind(rendered("default"), "Ingress")) == {RELEASE}


def test_in_cluster_redis_never_evicts(values_name: str) -> None:
    """An evicted stream entry or dedupe bitmap is a lost or double-counted bid: the in-cluster Redis refuses
    writes at its memory cap instead, below its container's memory limit."""
    statefulsets = of_kind(rendered(values_name), "StatefulSet")
    redis = [s for name, s in statefulsets.items() if "redis" in name]
    if not redis:
        pytest.skip(f"{values_name} uses a managed Redis")
    (container,) = redis[0]["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    maxmemory_mb = int(args[args.index("--maxmemory") + 1].removesuffix("mb"))
    limit_mi = int(container["resources"]["limits"]["memory"].removesuffix("Mi").removesuffix("Gi"))
    limit_mb = limit_mi * (1024 if container["resources"]["limits"]["memory"].endswith("Gi") else 1) * 1.048576
    assert maxmemory_mb < limit_mb
