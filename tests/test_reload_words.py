"""What people read about reloads and overrides: the change summary of a reload, times in
words, the refused-reload alert, and what `status --check` counts as a problem."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from lbhealthd import status
from lbhealthd.config import Config, parse_config
from lbhealthd.config.changes import changes
from lbhealthd.report import Reload
from lbhealthd.status_page import render_page
from lbhealthd.times import at_text, iso_utc, relative, until_text, who_text

NOW = 1_796_235_548.43  # 2026-12-02 18:19:08 UTC
BASE: dict[str, Any] = {
    "daemon": {"round_interval": "1s"},
    "pools": [
        {"name": "api", "fall": 3, "probe": {"interval": "1s"}},
        {"name": "web", "fall": 3},
    ],
}


def _config(**edits: Any) -> Config:
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    for path, value in edits.items():
        node = doc
        *parents, last = path.split("__")
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is None:
            del node[int(last) if last.isdigit() else last]
        else:
            node[last] = value
    return parse_config(yaml.safe_dump(doc), "test")


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        pytest.param({}, [], id="nothing"),
        pytest.param({"pools__0__fall": 4}, ["pools[api].fall: 3 -> 4"], id="pool key"),
        pytest.param(
            {"pools__0__probe": {"interval": "2s"}},
            ["pools[api].probe.interval: 1.0 -> 2.0"],
            id="nested key",
        ),
        pytest.param({"pools__1": None}, ["pools[web]: removed"], id="pool removed"),
        pytest.param(
            {"daemon__round_interval": "500ms"},
            ["daemon.round_interval: 1.0 -> 0.5"],
            id="daemon key",
        ),
        pytest.param(
            {"daemon__http": "127.0.0.1:9999"},
            [
                "daemon.http: '127.0.0.1:9110' -> '127.0.0.1:9999' "
                "(read at start only: restart to apply)"
            ],
            id="start-only key",
        ),
    ],
)
def test_changes_name_each_changed_key(edits: dict[str, Any], expected: list[str]) -> None:
    """Each changed key is one line with its path, old and new value."""
    assert changes(_config(), _config(**edits)) == expected


def test_changes_see_pools_by_name_not_position() -> None:
    """Reordering the pools is no change; a pool added is one line."""
    old = _config()
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    doc["pools"].reverse()
    assert changes(old, parse_config(yaml.safe_dump(doc), "t")) == []
    doc["pools"].append({"name": "admin"})
    assert changes(old, parse_config(yaml.safe_dump(doc), "t")) == ["pools[admin]: added"]


@pytest.mark.parametrize(
    ("until", "text"),
    [
        pytest.param(None, "until restored", id="no expiry"),
        pytest.param(NOW + 120, "until 18:21 UTC (in 2m)", id="minutes"),
        pytest.param(NOW + 45, "until 18:19 UTC (in 45s)", id="seconds"),
        pytest.param(NOW + 3 * 3600 + 300, "until 21:24 UTC (in 3h 5m)", id="hours"),
        pytest.param(NOW + 2 * 86400, "until 2026-12-04 18:19 UTC (in 2d)", id="days"),
        pytest.param(NOW - 90, "until 18:17 UTC (1m 30s ago)", id="past"),
        pytest.param(NOW + 116, "until 18:21 UTC (in 1m 56s)", id="not-rounded-down"),
    ],
)
def test_until_text(until: float | None, text: str) -> None:
    """An override's end reads as a UTC time and how far off it is, never a Unix time."""
    assert until_text(until, NOW) == text


def test_times_that_no_calendar_holds_are_said_as_they_are() -> None:
    """A time beyond any calendar is shown as its number, not an exception."""
    assert at_text(1e300, NOW) == "1e+300 (Unix time)"
    assert iso_utc(1e300) is None
    assert iso_utc(NOW) == "2026-12-02T18:19:08Z"
    assert relative(-3 * 86400) == "3d ago"


@pytest.mark.parametrize(
    ("who", "shown"),
    [
        ("alice (uid 1001, pid 4599)", "alice (uid 1001)"),
        ("uid 1234 (uid 1234, pid 7)", "uid 1234 (uid 1234)"),
        ("unknown", "unknown"),
        ("alice (uid 1000, cli)", "alice (uid 1000, cli)"),
    ],
)
def test_who_text_drops_the_commands_pid(who: str, shown: str) -> None:
    """The pid of the short-lived command is left off the screen, nothing else."""
    assert who_text(who) == shown


def _server(override: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "server": "api/s1",
        "lb_state": "drain" if override else "ready",
        "lb_op": "up",
        "weight": 100,
        "initial_weight": 100,
        "override": override,
    }


def _doc(running: bool = True, **pool: Any) -> dict[str, Any]:
    daemon: dict[str, Any] = {"running": running, "alerts": []}
    if running:
        daemon.update(pid=1, rounds=9)
    return {
        "version": 1,
        "generated_at": NOW,
        "daemon": daemon,
        "pools": [
            {
                "name": "api",
                "size": 5,
                "out": 1,
                "in_service": 4,
                "max_out": 2,
                "max_drained": 0.4,
                "min_in_service": 2,
                "drained_by": {"lbhealthd": 1, "operator": 0},
                "blind": False,
                "lb_available": True,
                "inconsistent": False,
                "alerts": [],
                "servers": [_server()],
                **pool,
            }
        ],
    }


def test_status_table_shows_when_an_override_ends_and_who_without_pid() -> None:
    """The why column says who (no pid) and until when, in UTC and from now."""
    override = {
        "kind": "drain",
        "reason": "disk full",
        "who": "alice (uid 1001, pid 4599)",
        "since": NOW - 60,
        "until": NOW + 120,
    }
    table = status.render(_doc(servers=[_server(override)]))
    assert table.split("\n")[-1].endswith(
        "drain by alice (uid 1001), until 18:21 UTC (in 2m): disk full"
    )
    assert "pid 4599" not in table
    assert "1796235" not in table


REFUSED = Reload(NOW, ok=False, problems=("pools[0].fall: must be at least 1 (line 9)",))


def test_refused_reload_alert_names_the_field_and_the_config_in_use() -> None:
    """The alert says when the reload was refused, why, and since when the config in use runs."""
    assert status.reload_alert(REFUSED, NOW - 4560) == (
        "config reload refused at 18:19 UTC: pools[0].fall: must be at least 1 (line 9); "
        "running the config loaded at 17:03 UTC"
    )


def test_status_page_shows_a_daemon_alert() -> None:
    """The page lists the daemon's alerts above the pools, escaped."""
    doc = _doc()
    doc["daemon"]["alerts"] = [{"rule": "config_reload", "message": "refused <b>x</b>"}]
    page = render_page(doc, 2, NOW)
    assert '<ul class="alerts" id="daemon-alerts">' in page
    assert "refused &lt;b&gt;x&lt;/b&gt;" in page
    assert page.index("daemon-alerts") < page.index('id="pool-api"')


@pytest.mark.parametrize(
    ("doc", "problems"),
    [
        pytest.param(_doc(), [], id="all well"),
        pytest.param(_doc(running=False), ["the daemon is not running"], id="not running"),
        pytest.param(_doc(blind=True), ["pool api: blind"], id="blind"),
        pytest.param(
            _doc(lb_available=False, alerts=[{"rule": "lb_unavailable", "message": "x"}]),
            ["pool api: load balancer unreadable", "pool api: alert lb_unavailable"],
            id="lb unreadable",
        ),
        pytest.param(_doc(inconsistent=True), ["pool api: inconsistent"], id="inconsistent"),
        pytest.param(_doc(in_service=1, out=4), ["pool api: below min_in_service"], id="below min"),
        pytest.param(_doc(at_cap=True, out=2, in_service=3), [], id="at cap is no problem"),
        pytest.param(
            _doc(alerts=[{"rule": "balance", "message": "x"}, {"rule": "audit", "message": "y"}]),
            ["pool api: alert audit", "pool api: alert balance"],
            id="alerts",
        ),
    ],
)
def test_check_problems(doc: dict[str, Any], problems: list[str]) -> None:
    """`status --check` exits 1 for exactly these; 0 when the list is empty."""
    assert status.check_problems(doc) == problems


def test_check_problems_counts_a_refused_reload() -> None:
    """A refused reload is a daemon alert, and a problem for `status --check`."""
    doc = _doc()
    doc["daemon"]["alerts"] = [{"rule": "config_reload", "message": "refused"}]
    assert status.check_problems(doc) == ["daemon: config_reload"]
