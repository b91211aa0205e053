"""Reading a consumer's /metrics (on METRICS_PORT): its samples, by name and labels (None for a series it does
not have)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape_when(port: int, condition) -> dict | None:
    samples = scrape(port)
    return samples if condition(samples) else None


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def events_by(samples: dict) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["event_type"], dict(labels)["outcome"]): v
        for (name, labels), v in samples.items()
        if name == "billing_events_total" and v
    }
