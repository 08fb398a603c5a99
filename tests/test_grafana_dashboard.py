"""The Grafana dashboard in deploy/grafana: a well-formed dashboard whose queries are valid
PromQL and read only metrics the daemon exports."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promql_names import exported_names, metric_names
from tests.required_tools import require

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "lbhealthd-dashboard.json"
DATASOURCE = "${datasource}"
# What Grafana puts in the place of its variables, to check the queries with promtool.
VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$pool": ".*"}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(d: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in collapsed rows too."""
    for panel in d["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(d: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title and refId, expression) of every panel query."""
    for panel in panels(d):
        for target in panel.get("targets", []):
            yield f"{panel['title']} {target.get('refId')}", target.get("expr", "")


def test_dashboard_structure() -> None:
    """Panel ids are unique; every panel but a row has a place on the grid, inside its 24
    columns and overlapping no other, and queries with an expression and a refId of its own,
    through the datasource variable."""
    d = dashboard()
    assert d["schemaVersion"] >= 36 and d["uid"] and d["title"]
    every = list(panels(d))
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in every:
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("x", "y", "w", "h")), panel["title"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        if panel["type"] == "row":
            continue
        targets = panel["targets"]
        assert targets, panel["title"]
        assert all(t["expr"].strip() for t in targets), panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for where in (panel, *targets):
            assert where["datasource"]["uid"] == DATASOURCE, panel["title"]


def test_template_variables() -> None:
    """The data source is a variable of Prometheus sources, and pools are chosen from the
    values of an exported metric's pool label."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    pool = variables["pool"]
    found = re.fullmatch(r"label_values\((\w+),\s*pool\)", pool["query"]["query"])
    assert found is not None and pool["definition"] == pool["query"]["query"]
    assert found.group(1) in exported_names()
    assert pool["includeAll"] and pool["multi"]


def test_queries_read_only_exported_metrics() -> None:
    """Every metric a panel queries is one a daemon exports."""
    exported = exported_names()
    unknown = {
        where: sorted(metric_names(expr) - exported)
        for where, expr in queries(dashboard())
        if metric_names(expr) - exported or not metric_names(expr)
    }
    assert unknown == {}


def test_queries_on_a_pool_follow_the_pool_variable() -> None:
    """A query of a per-pool or per-server metric keeps to the pools chosen above."""
    for where, expr in queries(dashboard()):
        if re.search(r"lbhealthd_(pool|server|probe|decisions|weight)", expr):
            selectors = re.findall(r"lbhealthd_\w+(\{[^}]*\})?", expr)
            assert all('pool=~"$pool"' in s for s in selectors), where


def test_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every query (Grafana's variables replaced by values)."""
    binary = require("promtool", "prometheus")
    rules = []
    for n, (_, expr) in enumerate(queries(dashboard())):
        for name, value in VARIABLES.items():
            expr = expr.replace(name, value)
        rules.append({"record": f"dashboard:query_{n}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [binary, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"promtool check rules failed:\n{done.stdout}{done.stderr}")
