"""grafana/: the committed dashboards are exactly what grafana/generate.py writes; every panel says what red
means and queries only the contract's metrics (../shared/CONTRACT.md, Metrics); every query parses in promtool."""
from __future__ import annotations

import difflib
import json
import re
import subprocess
import sys

import pytest
import yaml

from tests.promtool_helpers import ROOT, promtool

DASHBOARDS = ROOT / "grafana" / "dashboards"
SCHEMA_VERSION = 42  # what grafana-foundation-sdk 0.0.21 writes: Grafana 12's dashboard schema

HISTOGRAMS = {
    "billing_webhook_request_duration_seconds",
    "billing_event_processing_seconds",
    "billing_event_end_to_end_seconds",
}
METRICS = HISTOGRAMS | {
    # receiver (job billing-receiver)
    "billing_webhook_requests_total",
    "billing_webhook_events_total",
    "billing_webhook_signature_failures_total",
    "billing_webhook_enqueue_failures_total",
    "billing_entitlement_cache_requests_total",
    # consumers (job billing-consumer)
    "billing_events_total",
    "billing_stream_length",
    "billing_group_lag",
    "billing_pending_entries",
    "billing_oldest_pending_age_seconds",
    "billing_dead_letters",
    "billing_reclaimed_total",
    "billing_consumer_last_success_timestamp_seconds",
    "billing_db_errors_total",
}
# Grafana's own variables, replaced by something of the same type for promtool.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def panels(dashboard: dict) -> list[dict]:
    """Every panel that shows data, including those inside collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def committed() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("dashboards")
    result = subprocess.run([sys.executable, str(ROOT / "grafana" / "generate.py"), str(out)],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        pytest.fail(f"grafana/generate.py failed (is the test extra installed? pip install -e '.[test]'):\n"
                    f"{result.stderr}", pytrace=False)
    return out


def test_committed_json_is_what_generate_writes(regenerated):
    assert sorted(committed()) == sorted(path.name for path in regenerated.glob("*.json"))
    for name in committed():
        ours, theirs = (DASHBOARDS / name).read_text(), (regenerated / name).read_text()
        if ours != theirs:
            diff = "".join(list(difflib.unified_diff(ours.splitlines(True), theirs.splitlines(True),
                                                     f"committed/{name}", f"generated/{name}"))[:60])
            pytest.fail(f"grafana/dashboards/{name} differs from what grafana/generate.py writes; run "
                        f".venv/bin/python grafana/generate.py and commit the result:\n{diff}", pytrace=False)


def test_there_is_a_dashboard():
    assert committed(), "no dashboard JSON in grafana/dashboards/"


@pytest.mark.parametrize("name", sorted(committed()))
def test_schema_version_is_current(name):
    assert committed()[name]["schemaVersion"] == SCHEMA_VERSION


@pytest.mark.parametrize("name", sorted(committed()))
def test_every_panel_explains_itself_and_queries(name):
    for panel in panels(committed()[name]):
        assert panel.get("description", "").strip(), f"{panel['title']}: no description"
        assert any(target.get("expr", "").strip() for target in panel.get("targets", [])), \
            f"{panel['title']}: no query"


@pytest.mark.parametrize("name", sorted(committed()))
def test_queries_use_only_the_contracts_metrics(name):
    for panel in panels(committed()[name]):
        for target in panel["targets"]:
            for metric in re.findall(r"\bbilling_\w+", target["expr"]):
                base = re.sub(r"_(bucket|sum|count)$", "", metric)
                assert metric in METRICS or base in HISTOGRAMS, f"{panel['title']}: {metric} is not in the contract"


@pytest.mark.parametrize("name", sorted(committed()))
def test_queries_parse(name, tmp_path):
    rules = []
    for panel in panels(committed()[name]):
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{panel['title']}: a Grafana variable promtool cannot stand in for: {expr}"
            rules.append({"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": expr})
    path = tmp_path / "panel_queries.yml"
    path.write_text(json.dumps({"groups": [{"name": name, "rules": rules}]}))  # JSON is YAML
    assert f"SUCCESS: {len(rules)} rules found" in promtool("check", "rules", path)


@pytest.mark.parametrize("name", sorted(committed()))
def test_panels_use_the_provisioned_datasource(name):
    provisioned = yaml.safe_load((ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    for panel in panels(committed()[name]):
        refs = [panel["datasource"]] + [target["datasource"] for target in panel["targets"]]
        assert all(ref == {"type": "prometheus", "uid": uid} for ref in refs), panel["title"]


def test_provisioning_points_at_a_file_provider():
    provider = yaml.safe_load((ROOT / "grafana" / "provisioning" / "dashboards" / "billing.yml").read_text())
    assert [p["type"] for p in provider["providers"]] == ["file"]
