"""Scraping a role's /metrics as Prometheus does, and reading the samples back (tests only)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> dict[str, float]:
    """Every sample of `url` (a /metrics endpoint): `name{label="value",...}` (labels sorted) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - the test's own server
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
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
