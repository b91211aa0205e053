"""prometheus/: the scrape config and alert rules load in promtool, their unit tests pass, and every alert
has a unit test that fires and one that stays quiet, a severity, and a runbook heading in the README."""
from __future__ import annotations

import re

import pytest
import yaml

from tests.promtool_helpers import ROOT, promtool

RULES = ROOT / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "prometheus" / "alerts_test.yml"


def alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_rules_are_valid():
    assert "SUCCESS" in promtool("check", "rules", RULES)


def test_scrape_config_is_valid():
    # Also checks that its rule_files point at alerts.yml.
    assert "SUCCESS" in promtool("check", "config", ROOT / "prometheus" / "prometheus.yml")


def test_rule_unit_tests_pass():
    assert "SUCCESS" in promtool("test", "rules", RULE_TESTS)


def test_scrape_jobs_are_the_contracts():
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    assert [job["job_name"] for job in config["scrape_configs"]] == ["billing-receiver", "billing-consumer"]
    assert config["rule_files"] == ["alerts.yml"]


def test_every_alert_is_tested_firing_and_quiet():
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for rule in alerts():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case.get("exp_alerts") for case in mine), f"{rule['alert']}: no test where it fires"
        assert any(not case.get("exp_alerts") for case in mine), f"{rule['alert']}: no test where it stays quiet"


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_alert_has_severity_annotations_and_runbook(rule):
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
    headings = re.findall(r"^#{2,4} (.+)$", (ROOT / "README.md").read_text(), flags=re.MULTILINE)
    anchors = {github_anchor(heading) for heading in headings}
    page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
    assert page == "README.md" and anchor == rule["alert"].lower()
    assert anchor in anchors, f"README.md has no heading for #{anchor} (add it under '### Runbook')"
