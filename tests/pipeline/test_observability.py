"""The dashboards and alert rules against a real Prometheus scraping a live stack: a receiver with two
gunicorn workers and two consumers, driven with real traffic (good, duplicate, badly signed and broken
events, entitlement reads). Every panel query of every dashboard must parse, and the core ones must
return data; the alert rules must load; healthy traffic must fire no alert but the dead-letter one we
caused on purpose."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from harness import (
    REPO,
    Process,
    free_port,
    service_env,
    start_receiver,
    wait_for,
)
from models.db import open_database
from models.migrations import migrate
from receiver.sample_events import build_event
from tests.pipeline.dashboard_helpers import JOB_VARIABLES, interpolate, variables
from tests.stripe_helpers import sign

DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
ALERTS = REPO / "prometheus" / "alerts.yml"
# Panels that show failures we do not cause here (an outage, a dead consumer): they must parse, and may be empty.
MAY_BE_EMPTY = re.compile(r"database errors|reclaim|db error", re.I)


def panels_of(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows
    return [p for p in found if p.get("targets")]


def concrete(expr: str, dashboard: dict) -> str:
    """A Grafana expression as Prometheus would receive it from the dashboard as it opens (its variables'
    defaults: the contract's job names, every instance)."""
    expr = re.sub(r"\$__(rate_interval|interval|range)|\$\{__(rate_interval|interval|range)\}", "30s", expr)
    return interpolate(expr, dashboard)


class Prometheus:
    def __init__(self, tmp: Path, receiver: str, consumers: list[str]):
        if shutil.which("prometheus") is None:
            raise RuntimeError("prometheus is not installed (apt-get install prometheus)")
        self.port = free_port()
        self.receiver, self.consumers = receiver, consumers
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": "billing-receiver", "static_configs": [{"targets": [receiver]}]},
                {"job_name": "billing-consumer", "static_configs": [{"targets": consumers}]},
            ],
        }
        (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = open(tmp / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self.api("/-/ready", raw=True), what="prometheus to be ready")

    def api(self, path: str, raw: bool = False, **params):
        url = f"http://127.0.0.1:{self.port}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        body = urllib.request.urlopen(url, timeout=10).read()
        return body if raw else json.loads(body)

    def query(self, expr: str) -> list:
        answer = self.api("/api/v1/query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def close(self):
        self.process.terminate()
        self.process.wait(timeout=20)
        self.log.close()


def post(base: str, body: bytes, headers: dict) -> int:
    request = urllib.request.Request(f"{base}/webhooks/stripe", data=body, headers=headers, method="POST")
    try:
        return urllib.request.urlopen(request, timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("observability")
    database_url = f"sqlite:///{tmp}/billing.db"
    migrate(open_database(database_url))
    client = redis_server.client()
    client.flushall()
    env = service_env(redis_server.url, database_url, MAX_DELIVERIES="2", CLAIM_IDLE_MS="1000")
    receiver, base = start_receiver(env, str(tmp), workers=2)
    ports = [free_port(), free_port()]
    consumers = [
        Process(
            ["consumer", "run", "--name", f"obs-{i}", "--block-ms", "200"], {**env, "METRICS_PORT": str(port)}, str(tmp)
        )
        for i, port in enumerate(ports)
    ]
    prometheus = None
    try:
        for port in ports:
            wait_for(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).status == 200,
                what=f"consumer metrics on {port}",
            )
        prometheus = Prometheus(tmp, base.removeprefix("http://"), [f"127.0.0.1:{p}" for p in ports])
        drive_traffic(base)
        wait_for(lambda: client.xlen("stripe:events:dead") == 1, timeout=30, what="the broken event's dead letter")
        wait_for(lambda: _scraped_total(prometheus) >= 42, timeout=30, what="prometheus to scrape the traffic")
        # rate() needs two samples in its window: a few more scrapes of every target after the traffic.
        for metric in ("billing_webhook_requests_total", "billing_events_total", "up"):
            wait_for(
                lambda: prometheus.query(f"min(count_over_time({metric}[30s])) >= 4"),
                timeout=30,
                what=f"several scrapes of {metric}",
            )
        yield prometheus
    finally:
        if prometheus:
            prometheus.close()
        for proc in consumers:
            proc.stop()
        receiver.stop()


def _scraped_total(prometheus: Prometheus) -> float:
    result = prometheus.query("sum(billing_events_total)")
    return float(result[0]["value"][1]) if result else 0.0


def drive_traffic(base: str) -> None:
    """40 good events over 20 communities, 10 duplicates, 5 bad signatures, 1 unknown type, 1 broken
    event (dead-lettered after 2 failures), and entitlement reads that hit and miss the cache."""
    for n in range(20):
        for event in (
            build_event("checkout.session.completed", f"obs{n}", tier="premium"),
            build_event("invoice.paid", f"obs{n}"),
        ):
            body = json.dumps(event).encode()
            assert post(base, body, sign(body)) == 200
            if n < 5:
                assert post(base, body, sign(body)) == 200  # duplicate
    for _ in range(5):
        body = json.dumps(build_event("invoice.paid", "obs-x")).encode()
        assert post(base, body, sign(body, secret="whsec_wrong")) == 400
    unknown = build_event("invoice.paid", "obs-u")
    unknown["type"] = "customer.tax_id.created"
    broken = build_event("invoice.paid", "obs-b")
    broken["data"]["object"] = "not an invoice"
    for event in (unknown, broken):
        body = json.dumps(event).encode()
        assert post(base, body, sign(body)) == 200
    for n in range(20):
        for _ in range(3):
            urllib.request.urlopen(f"{base}/v1/communities/obs{n}/entitlements", timeout=5).read()


def dashboard_panels() -> list[tuple[str, str, list[str]]]:
    assert DASHBOARDS, "no dashboards under grafana/dashboards"
    found = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        found.extend(
            (path.name, panel["title"], [concrete(t["expr"], dashboard) for t in panel["targets"] if t.get("expr")])
            for panel in panels_of(dashboard)
        )
    return found


def test_every_panel_query_parses_and_the_core_ones_have_data(stack):
    panels = dashboard_panels()
    assert len(panels) >= 14 and all(exprs for _, _, exprs in panels)
    empty = []
    for dashboard, title, exprs in panels:
        results = [stack.query(expr) for expr in exprs]  # each asserts its query parsed and ran
        if not any(results) and not MAY_BE_EMPTY.search(title):
            empty.append(f"{dashboard}: {title}: {exprs}")
    assert not empty, "panels with no data after real traffic:\n" + "\n".join(empty)


def test_the_variables_offer_the_jobs_and_instances_scraped(stack):
    """Each job variable's query finds its default job, each instance variable's finds the targets of that job
    (label_values(SELECTOR, label) asked the way Grafana's Prometheus data source answers it: the label's
    values among the series SELECTOR matches)."""
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        offered = {}
        for name, variable in variables(dashboard).items():
            if variable["type"] != "query":
                continue
            selector, label = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable["query"]).groups()
            series = stack.query(f"count by ({label}) ({concrete(selector, dashboard)})")
            offered[name] = {s["metric"][label] for s in series}
        for job, default in JOB_VARIABLES.items():
            assert default in offered[job], (path.name, job, offered[job])
        assert offered["receiver_instance"] == {stack.receiver}, offered
        assert offered["consumer_instance"] == set(stack.consumers), offered


def test_the_alert_rules_load_and_only_the_dead_letter_alert_fires(stack):
    groups = stack.api("/api/v1/rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"] if rule["type"] == "alerting"]
    assert len(rules) >= 6 and all(rule["health"] == "ok" for rule in rules), rules
    wait_for(lambda: stack.query("max(billing_dead_letters) == 1"), what="the dead letter to be scraped")
    alerts = stack.api("/api/v1/alerts")["data"]["alerts"]
    firing = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
    unexpected = {name for name in firing if "dead" not in name.lower()}
    assert not unexpected, f"alerts firing on a healthy stack: {unexpected}"
