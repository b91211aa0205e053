"""billing_build_info{version, python} 1 on the receiver's and a consumer's /metrics: which release (the
installed package's version) and which Python each target runs, one sample per target."""

from __future__ import annotations

import importlib.metadata
import platform

from prometheus_client.parser import text_string_to_metric_families

from billing.config import Settings
from harness import SECRET, Process, free_port, service_env, wait_for
from models.db import database_proxy
from receiver import create_app
from tests.consumer_metrics_helpers import scrape

EXPECTED = [
    ({"version": importlib.metadata.version("stripe-billing-pipeline"), "python": platform.python_version()}, 1.0)
]


def build_info(samples: dict) -> list[tuple[dict, float]]:
    return [(dict(labels), v) for (name, labels), v in samples.items() if name == "billing_build_info"]


def test_the_receiver_says_which_release_it_runs(redis_url, sqlite_url):
    app = create_app(Settings(webhook_secrets=(SECRET,), redis_url=redis_url, database_url=sqlite_url))
    try:
        response = app.test_client().get("/metrics")
    finally:
        app.extensions["redis"].close()
        database_proxy.initialize(None)
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))}
    assert families["billing_build_info"].type == "gauge"
    assert [(s.labels, s.value) for s in families["billing_build_info"].samples] == EXPECTED


def test_a_consumer_says_which_release_it_runs(redis_url, sqlite_url, tmp_path):
    port = free_port()
    proc = Process(
        ["consumer", "run", "--name", "build-info", "--block-ms", "200"],
        service_env(redis_url, sqlite_url, METRICS_PORT=str(port)),
        str(tmp_path),
    )
    try:
        samples = wait_for(lambda: scrape(port), what=f"consumer metrics on {port}: {proc.output()[-2000:]}")
        assert build_info(samples) == EXPECTED
    finally:
        proc.stop()
