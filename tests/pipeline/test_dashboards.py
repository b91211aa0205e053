"""grafana/: the committed dashboards are exactly what grafana/generate.py writes; every panel says what red
means and queries only the contract's metrics (../shared/CONTRACT.md, Metrics) and those the README adds; every
query parses in promtool. A dashboard imports into any Grafana: its data source, jobs and instances are template
variables (defaults: the provisioned data source, the contract's job names, every instance) that every query uses."""

from __future__ import annotations

import difflib
import json
import re
import subprocess
import sys

import pytest
import yaml

from tests.pipeline.dashboard_helpers import (
    GRAFANA_VARIABLES,
    JOB_VARIABLES,
    VARIABLE,
    interpolate,
    variables,
)
from tests.pipeline.promtool_helpers import ROOT, promtool

DASHBOARDS = ROOT / "grafana" / "dashboards"
SCHEMA_VERSION = 42  # what grafana-foundation-sdk 0.0.21 writes: Grafana 12's dashboard schema

HISTOGRAMS = {
    "billing_webhook_request_duration_seconds",
    "billing_api_request_duration_seconds",
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
    "billing_api_requests_total",
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
    "billing_reconciled_events_total",
}
# Grafana's own variables, replaced by something of the same type for promtool.
# Gauges of the whole group that every consumer exports: a panel shows their max() over the consumers.
GROUP_WIDE = (
    "billing_stream_length",
    "billing_group_lag",
    "billing_pending_entries",
    "billing_oldest_pending_age_seconds",
    "billing_dead_letters",
)
INSTANCE_VARIABLES = {"receiver_instance": "receiver_job", "consumer_instance": "consumer_job"}


def panels(dashboard: dict) -> list[dict]:
    """Every panel that shows data, including those inside collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def used_variables(expr: str) -> set[str]:
    return {m[1] or m[2] or m[3] for m in VARIABLE.finditer(expr)} - {name.lstrip("$") for name in GRAFANA_VARIABLES}


def committed() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("dashboards")
    result = subprocess.run(
        [sys.executable, str(ROOT / "grafana" / "generate.py"), str(out)], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        pytest.fail(
            f"grafana/generate.py failed (is the test extra installed? pip install -e '.[test]'):\n{result.stderr}",
            pytrace=False,
        )
    return out


def test_committed_json_is_what_generate_writes(regenerated):
    assert sorted(committed()) == sorted(path.name for path in regenerated.glob("*.json"))
    for name in committed():
        ours, theirs = (DASHBOARDS / name).read_text(), (regenerated / name).read_text()
        if ours != theirs:
            diff = "".join(
                list(
                    difflib.unified_diff(
                        ours.splitlines(True), theirs.splitlines(True), f"committed/{name}", f"generated/{name}"
                    )
                )[:60]
            )
            pytest.fail(
                f"grafana/dashboards/{name} differs from what grafana/generate.py writes; run "
                f".venv/bin/python grafana/generate.py and commit the result:\n{diff}",
                pytrace=False,
            )


def test_there_is_a_dashboard():
    assert committed(), "no dashboard JSON in grafana/dashboards/"


@pytest.mark.parametrize("name", sorted(committed()))
def test_schema_version_is_current(name):
    assert committed()[name]["schemaVersion"] == SCHEMA_VERSION


@pytest.mark.parametrize("name", sorted(committed()))
def test_every_panel_explains_itself_and_queries(name):
    for panel in panels(committed()[name]):
        assert panel.get("description", "").strip(), f"{panel['title']}: no description"
        assert any(target.get("expr", "").strip() for target in panel.get("targets", [])), f"{panel['title']}: no query"


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
    dashboard = committed()[name]
    for panel in panels(dashboard):
        for target in panel["targets"]:
            expr = interpolate(target["expr"], dashboard)
            assert "$" not in expr, f"{panel['title']}: a Grafana variable promtool cannot stand in for: {expr}"
            rules.append({"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": expr})
    for variable in variables(dashboard).values():  # label_values(SELECTOR, label): the selector must parse
        if variable["type"] == "query":
            selector = re.fullmatch(r"label_values\((.+), *\w+\)", variable["query"])[1]
            rules.append({"record": f"dashboard:variable_{variable['name']}", "expr": interpolate(selector, dashboard)})
    path = tmp_path / "panel_queries.yml"
    path.write_text(json.dumps({"groups": [{"name": name, "rules": rules}]}))  # JSON is YAML
    assert f"SUCCESS: {len(rules)} rules found" in promtool("check", "rules", path)


@pytest.mark.parametrize("name", sorted(committed()))
def test_panels_use_the_datasource_variable_which_defaults_to_the_provisioned_one(name):
    dashboard = committed()[name]
    variable = variables(dashboard)["datasource"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    provisioned = yaml.safe_load((ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert variable["current"]["value"] == provisioned["datasources"][0]["uid"]
    for panel in panels(dashboard):
        refs = [panel["datasource"]] + [target["datasource"] for target in panel["targets"]]
        assert all(ref == {"type": "prometheus", "uid": "${datasource}"} for ref in refs), panel["title"]
    for other in variables(dashboard).values():
        if other["type"] == "query":
            assert other["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, other["name"]


@pytest.mark.parametrize("name", sorted(committed()))
def test_jobs_and_instances_are_variables_every_query_uses(name):
    dashboard = committed()[name]
    defined = variables(dashboard)
    for job, default in JOB_VARIABLES.items():
        assert defined[job]["type"] == "query" and defined[job]["current"]["value"] == default
        assert re.fullmatch(r"label_values\(billing_\w+, *job\)", defined[job]["query"]), defined[job]["query"]
    for instance, job in INSTANCE_VARIABLES.items():
        variable = defined[instance]
        assert variable["type"] == "query" and variable["multi"] and variable["includeAll"]
        assert variable["allValue"] == ".*" and variable["current"]["value"] == ["$__all"]
        assert f'job="${job}"' in variable["query"] and variable["query"].endswith(", instance)")
    used = set()
    for panel in panels(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            used |= used_variables(expr)
            assert used_variables(expr) <= set(defined), f"{panel['title']}: undefined variable in {expr}"
            assert used_variables(expr) & set(JOB_VARIABLES), f"{panel['title']}: no job variable in {expr}"
            for selector in re.findall(r"\bbilling_\w+\{([^}]*)\}", expr):  # a job's metric: its instances too
                job = re.search(r'job="\$(\w+)"', selector)[1]
                side = job.removesuffix("_job")
                assert f'instance=~"${side}_instance"' in selector, f"{panel['title']}: {expr}"
    assert used >= set(JOB_VARIABLES) | set(INSTANCE_VARIABLES)


@pytest.mark.parametrize("name", sorted(committed()))
def test_group_wide_gauges_are_shown_as_the_max_over_consumers(name):
    for panel in panels(committed()[name]):
        for target in panel["targets"]:
            for metric in GROUP_WIDE:
                for match in re.finditer(rf"\b{metric}\b", target["expr"]):
                    assert target["expr"][: match.start()].endswith("max("), f"{panel['title']}: {target['expr']}"


@pytest.mark.parametrize("name", sorted(committed()))
def test_requires_lists_grafana_the_datasource_and_each_panel_type(name):
    dashboard = committed()[name]
    required = {(item["type"], item["id"]) for item in dashboard["__requires"]}
    assert {("grafana", "grafana"), ("datasource", "prometheus")} <= required
    assert {("panel", panel["type"]) for panel in panels(dashboard)} <= required
    assert not dashboard.get("__inputs"), "no __inputs: a provisioned dashboard would keep the ${DS_...} placeholder"


def test_provisioning_points_at_a_file_provider():
    provider = yaml.safe_load((ROOT / "grafana" / "provisioning" / "dashboards" / "billing.yml").read_text())
    assert [p["type"] for p in provider["providers"]] == ["file"]
