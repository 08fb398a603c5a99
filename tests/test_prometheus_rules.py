"""The Prometheus alert rules in deploy/prometheus: valid, unit-tested by promtool, complete
in their labels and annotations, linked to existing runbook sections, and querying only
metrics the daemon exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promql_names import exported_names, metric_names
from tests.required_tools import require

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "lbhealthd-rules.yml"
RULE_TESTS = RULES_DIR / "lbhealthd-rules.test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/lbhealthd/lbhealthd/blob/main/docs/runbook.md#"
SEVERITIES = {"critical", "warning"}
# Series Prometheus makes itself rather than scrapes from the daemon.
PROMETHEUS_OWN = frozenset({"up"})


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def promtool(*args: str) -> None:
    """Run promtool in the rules' directory; fail with its output when it fails."""
    binary = require("promtool", "prometheus")
    done = subprocess.run(
        [binary, *args],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"promtool {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


def test_promtool_checks_the_rules() -> None:
    """``promtool check rules`` accepts the file."""
    promtool("check", "rules", RULES.name)


def test_promtool_unit_tests_pass() -> None:
    """Every case of the promtool unit tests passes."""
    promtool("test", "rules", RULE_TESTS.name)


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """The unit tests hold, for each alert, a case where it fires and one where it does not."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    """Each alert is routed by its severity and says what happened, where, and what to do."""
    for rule in alerts():
        name, annotations = rule["alert"], rule.get("annotations", {})
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        assert annotations.get("summary"), name
        assert "$labels.instance" in annotations.get("description", ""), name
        if "pool" in rule["expr"] or "by (pool" in rule["expr"]:
            assert "$labels.pool" in annotations["description"], name
        assert annotations.get("runbook_url", "").startswith(RUNBOOK_URL), name


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_runbook_link_leads_to_a_section() -> None:
    """Each runbook_url names a heading of docs/runbook.md."""
    headings = re.findall(r"^#{2,4} (.+)$", RUNBOOK.read_text(), re.M)
    anchors = {github_anchor(h) for h in headings}
    for rule in alerts():
        anchor = rule["annotations"]["runbook_url"].removeprefix(RUNBOOK_URL)
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in docs/runbook.md"


def test_rules_query_only_exported_metrics() -> None:
    """Every metric an alert's expression reads is one a daemon exports (a misspelt name
    would make an alert that can never fire)."""
    exported = exported_names() | PROMETHEUS_OWN
    unknown = {
        rule["alert"]: sorted(metric_names(rule["expr"]) - exported)
        for rule in alerts()
        if metric_names(rule["expr"]) - exported
    }
    assert unknown == {}
    assert all(metric_names(rule["expr"]) for rule in alerts())


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ('up{job="lbhealthd"} == 0', {"up"}),
        (
            "sum without (outcome) (rate(a_total[5m])) / on (pool) group_left b > 0.2",
            {"a_total", "b"},
        ),
        (
            'histogram_quantile(0.99, sum by (le, pool) (rate(h_bucket{pool=~"$pool"}'
            "[$__rate_interval])))",
            {"h_bucket"},
        ),
        ("time() - t_seconds > 60 or increase(r_total[2m:30s]) == 0", {"t_seconds", "r_total"}),
        ('x offset 1h30m unless on (pool) label_replace(y, "z", "$1", "w", "(.*)")', {"x", "y"}),
        ("sum(c) by (pool) and bool d", {"c", "d"}),
    ],
    ids=["matchers", "grouping", "quantile", "time-subquery", "offset-strings", "by-after"],
)
def test_metric_names_are_read_from_promql(query: str, names: set[str]) -> None:
    """Functions, keywords, label names, durations, strings and variables are not names."""
    assert metric_names(query) == names


def test_exported_names_follow_the_exposition() -> None:
    """Counters are exported with ``_total``, histograms with their series; a name only
    rendered in the text exposition of a populated registry is counted too."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from lbhealthd.daemon.metrics import Metrics

    m = Metrics()
    m.lb_command(ok=False)
    exported = exported_names(m.registry)
    rendered = {
        s.name
        for family in text_string_to_metric_families(generate_latest(m.registry).decode())
        for s in family.samples
    }
    assert rendered <= exported
    assert {"lbhealthd_rounds_total", "lbhealthd_probe_latency_seconds_bucket"} <= exported
    assert "lbhealthd_rounds" not in exported
    assert "lbhealthd_probe_latency_seconds" not in exported


def test_operations_lists_every_alert_with_its_severity() -> None:
    """docs/operations.md's table of alerts has a row for each rule, with its severity."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("## Alerts and dashboard") :]
    rows = dict(re.findall(r"^\| `(\w+)` \| (\w+) \|", section, re.M))
    assert rows == {rule["alert"]: rule["labels"]["severity"] for rule in alerts()}
