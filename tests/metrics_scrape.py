"""Scraping a role's /metrics as Prometheus does, and reading the samples back (tests only)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def exposition(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - the test's own server
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return str(response.read().decode())


def exposed_labels(url: str) -> dict[str, tuple[str, set[str]]]:
    """The product's families at `url` as docs/metrics.md names them: series name -> (type, label names)."""
    found: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(exposition(url)):
        # prometheus-client's `_created` series (a counter's or histogram's start time) read as gauges of their own.
        if family.name.startswith("bidengine_") and not family.name.endswith("_created"):
            name = f"{family.name}_total" if family.type == "counter" else family.name
            labels = {label for sample in family.samples for label in sample.labels} - {"le"}
            found[name] = (family.type, labels)
    return found


def scrape(url: str) -> dict[str, float]:
    """Every sample of `url` (a /metrics endpoint): `name{label="value",...}` (labels sorted) -> value."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition(url)):
        for sample in family.samples:
            labels = ",".join(f'{name}="{value}"' for name, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def moved(before: dict[str, float], after: dict[str, float], prefix: str = "bidengine_") -> dict[str, float]:
    """The samples (of the product's own families) whose value changed, and by how much."""
    return {
        name: value - before.get(name, 0.0)
        for name, value in after.items()
        if name.startswith(prefix) and value != before.get(name, 0.0)
    }
