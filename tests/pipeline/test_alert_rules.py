"""prometheus/: the scrape config and alert rules load in promtool, their unit tests pass, and every alert
has a unit test that fires and one that stays quiet, a severity, and a runbook link (RUNBOOK_BASE_URL#anchor)
to its heading in the README; prometheus/runbooks.py moves every link to another base and nothing else."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.parse

import pytest
import yaml

from tests.pipeline.promtool_helpers import ROOT, promtool

RULES = ROOT / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "prometheus" / "alerts_test.yml"
RUNBOOKS = ROOT / "prometheus" / "runbooks.py"


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


def runbook_base() -> str:
    """The one base every runbook_url starts with (the part before '#')."""
    bases = {rule["annotations"]["runbook_url"].partition("#")[0] for rule in alerts()}
    assert len(bases) == 1, f"runbook_urls on several bases: {sorted(bases)}; use one (prometheus/runbooks.py)"
    return bases.pop()


def test_runbook_links_default_to_the_readme_on_the_repository():
    base = urllib.parse.urlsplit(runbook_base())
    assert base.scheme == "https" and base.netloc and not base.query, runbook_base()
    assert base.path.endswith("/README.md"), f"{runbook_base()}: the default base is the README, where the runbook is"


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_alert_has_severity_annotations_and_runbook(rule):
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
    headings = re.findall(r"^#{2,4} (.+)$", (ROOT / "README.md").read_text(), flags=re.MULTILINE)
    anchors = {github_anchor(heading) for heading in headings}
    url = rule["annotations"]["runbook_url"]
    base, _, anchor = url.partition("#")
    assert base == runbook_base() and anchor == rule["alert"].lower(), (
        f"{rule['alert']}: runbook_url {url!r} is not {runbook_base()}#{rule['alert'].lower()}"
    )
    assert anchor in anchors, f"README.md has no heading for #{anchor} (add it under '### Runbook')"


# --- prometheus/runbooks.py: another runbook base for a deployment ------------------------------------------


def runbooks(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RUNBOOKS), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def without_runbooks(document: dict) -> tuple[dict, list[str]]:
    """The rules with their runbook_urls taken out, and those urls in order."""
    urls = []
    for group in document["groups"]:
        for rule in group["rules"]:
            urls.append(rule.get("annotations", {}).pop("runbook_url", None))
    return document, urls


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_another_base_changes_every_runbook_link_and_nothing_else(how, tmp_path):
    base = "https://wiki.example.com/ops/billing-runbook"
    result = runbooks(base) if how == "argument" else runbooks(env={"RUNBOOK_BASE_URL": base})
    assert result.returncode == 0, result.stderr
    original, old_urls = without_runbooks(yaml.safe_load(RULES.read_text()))
    rebased, new_urls = without_runbooks(yaml.safe_load(result.stdout))
    assert rebased == original
    assert new_urls == [f"{base}#{url.partition('#')[2]}" for url in old_urls]
    assert len(result.stdout.splitlines()) == len(RULES.read_text().splitlines())  # comments and layout kept
    copy = tmp_path / "billing-alerts.yml"
    copy.write_text(result.stdout)
    assert "SUCCESS" in promtool("check", "rules", copy)


def test_the_default_moves_with_the_unit_tests(tmp_path):
    for path in (RULES, RULE_TESTS):
        shutil.copy(path, tmp_path / path.name)
    base = "https://git.example.com/billing/stripe-billing-pipeline/-/blob/v2.0/README.md"
    result = runbooks("--in-place", base, str(tmp_path / RULES.name), str(tmp_path / RULE_TESTS.name))
    assert result.returncode == 0, result.stderr
    assert runbook_base() not in (tmp_path / RULES.name).read_text() + (tmp_path / RULE_TESTS.name).read_text()
    assert "SUCCESS" in promtool("test", "rules", tmp_path / RULE_TESTS.name)


@pytest.mark.parametrize(
    "base",
    [
        "README.md",
        "wiki.example.com/runbook",
        "https://wiki.example.com/r#x",
        "ftp://x/y",
        "https://wiki.example.com/a b",
    ],
)
def test_a_base_that_is_no_absolute_url_is_refused(base):
    result = runbooks(base)
    assert result.returncode == 1 and not result.stdout
    assert "absolute http(s) URL" in result.stderr
