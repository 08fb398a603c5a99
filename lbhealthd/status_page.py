"""The status page: the status document (lbhealthd.status) as one HTML page for a browser.

The page is rendered here from the same document as ``GET /status`` and ``lbhealthd status``,
so the three cannot disagree; the one-line texts (a server's LB state, its signals, why it is
where it is) are the table's own. It is pure: a document in, a string out.

Every text that comes from the document goes through ``html.escape`` — server and pool names,
reasons and operators' names are anyone's input, and a reason reading ``<script>`` must show as
those characters. The page needs nothing else: its style is inline, it has no script, no font,
no image, so the listener can forbid all of them (``Content-Security-Policy: default-src
'none'``). It reloads itself with ``<meta http-equiv="refresh">``.

Elements carry stable ids and classes for whoever reads the page mechanically: ``pool-POOL``,
``pool-POOL-in``, ``-out``, ``-by-lbhealthd``, ``-by-operator``, ``server-POOL-SERVER`` (with
``data-state`` = the LB state and ``data-owner``), cells ``why`` and ``override``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from lbhealthd.status import lb_text, signals_text, why_text

__all__ = ["MIN_REFRESH", "refresh_seconds", "render_page"]

MIN_REFRESH = 2  # seconds: a page reloading faster than this is hard to read
LAST_ACTIONS = 20  # rows in the page's list of the last actions

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d1d1f;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .3em}
p{margin:.3em 0}.muted{color:#666}
table{border-collapse:collapse;width:100%;background:#fff;margin:.5em 0}
th,td{border-bottom:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#eee;font-weight:600}td.num{font-variant-numeric:tabular-nums}
td.name,td.lb,td.weight,td.latency,td.signals,td.when{white-space:nowrap}
#actions table{width:auto}
tr[data-state=drain]{background:#fff4d6}tr[data-state=maint]{background:#eceff3}
tr.ramping td.weight{color:#a05a00;font-weight:600}
.flag{display:inline-block;padding:0 .4em;border-radius:3px;font-weight:600;margin-left:.4em}
.bad{background:#c62828;color:#fff}.warn{background:#f9a825;color:#000}.ok{background:#2e7d32;color:#fff}
ul.alerts{margin:.3em 0;padding-left:1.2em}ul.alerts li{color:#b71c1c}
.counts b{font-size:1.1em}
"""


def refresh_seconds(round_interval: float) -> int:
    """How often the page reloads: once a round, and no more than every MIN_REFRESH seconds."""
    return max(MIN_REFRESH, math.ceil(round_interval))


def utc(wall: float | None) -> str:
    """A wall-clock time as people read it: ``2026-12-06 23:41:07 UTC``."""
    if wall is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _cells(values: Iterable[tuple[str, object]]) -> str:
    return "".join(f'<td class="{cls}">{_e(v)}</td>' for cls, v in values)


def _daemon(d: Mapping[str, Any], now: float) -> str:
    if not d.get("running"):
        text = "NOT RUNNING: showing the load balancer and state_dir only"
        return f'<p id="daemon" data-running="false"><span class="flag bad">{_e(text)}</span></p>'
    age = d.get("last_round_age_s")
    text = (
        f"running, pid {d['pid']}, {d['rounds']} rounds"
        f"{'' if age is None else f', last round {age:.1f}s ago'}"
    )
    dry = ' <span class="flag warn">DRY RUN: changes nothing</span>' if d.get("dry_run") else ""
    return (
        f'<p id="daemon" data-running="true">daemon {_e(text)}{dry} '
        f'<span class="muted">· page made {_e(utc(now))}</span></p>'
    )


def _daemon_alerts(d: Mapping[str, Any]) -> str:
    """The daemon's own alerts (a refused reload): above every pool, since they concern all."""
    alerts = d.get("alerts") or []
    if not alerts:
        return ""
    return f'<ul class="alerts" id="daemon-alerts">{_alert_items(alerts)}</ul>'


def _alert_items(alerts: list[Mapping[str, Any]]) -> str:
    return "".join(
        f'<li class="alert" data-rule="{_e(a.get("rule", ""))}"><b>{_e(a.get("rule", ""))}</b>: '
        f"{_e(a.get('message', ''))}</li>"
        for a in alerts
    )


def _counts(pool: Mapping[str, Any]) -> str:
    if "size" not in pool:
        return ""
    pid = f"pool-{pool['name']}"
    by = pool.get("drained_by") or {}
    at_cap = ' <span class="flag warn">AT CAP</span>' if pool.get("at_cap") else ""
    return (
        f'<p class="counts"><b id="{_e(pid)}-in">{_e(pool["in_service"])}</b> in, '
        f'<b id="{_e(pid)}-out">{_e(pool["out"])}</b> out of {_e(pool["size"])} '
        f'(drained by lbhealthd <b id="{_e(pid)}-by-lbhealthd">{_e(by.get("lbhealthd", 0))}</b>'
        f', by an operator <b id="{_e(pid)}-by-operator">{_e(by.get("operator", 0))}</b>)'
        f' · cap: at most <span id="{_e(pid)}-max-out">{_e(pool["max_out"])}</span> out '
        f"(max_drained {_e(format(pool['max_drained'], '.0%'))}, "
        f"min_in_service {_e(pool['min_in_service'])}){at_cap}{_dry(pool)}</p>"
    )


def _dry(pool: Mapping[str, Any]) -> str:
    more = pool.get("would_be_out")
    if not more:
        return ""
    return f' <span class="flag warn">DRY RUN: {_e(more)} more would be out</span>'


def _flags(pool: Mapping[str, Any]) -> str:
    flags = []
    if pool.get("blind"):
        flags.append('<span class="flag bad" id="blind">BLIND: not draining</span>')
    if not pool.get("lb_available", True):
        flags.append('<span class="flag bad">LB UNREADABLE</span>')
    if pool.get("inconsistent"):
        flags.append('<span class="flag bad">INCONSISTENT: not draining or restoring</span>')
    return "".join(flags)


def _alerts(pool: Mapping[str, Any]) -> str:
    alerts = pool.get("alerts") or []
    if not alerts:
        return '<p class="muted">no alerts</p>'
    return f'<ul class="alerts">{_alert_items(alerts)}</ul>'


def _override(o: Mapping[str, Any] | None) -> str:
    """When an override began and ends; who set it and why are in the ``why`` cell."""
    if not o:
        return "-"
    until = "until restored" if o.get("until") is None else f"until {utc(o['until'])}"
    return f"{o['kind']} since {utc(o.get('since'))}, {until}"


def _want(s: Mapping[str, Any]) -> str:
    want = s.get("desired") or "-"
    fraction = s.get("desired_weight_fraction")
    if want == "ready" and fraction is not None and fraction < 1:
        want += f" at {fraction:.0%} weight"
    return str(want)


def _server_row(pool: str, s: Mapping[str, Any], now: float) -> str:
    name = s["server"].split("/", 1)[1]
    latency, signals = signals_text(s)
    probe = s.get("probe") or {}
    if probe.get("age_s") is not None:
        signals += f" ({probe['age_s']:.1f}s ago)"
    ramping = s.get("lb_state") == "ready" and s["weight"] < s["initial_weight"]
    cells = _cells(
        [
            ("name", name),
            ("lb", lb_text(s)),
            ("weight num", f"{s['weight']}/{s['initial_weight']}"),
            ("latency num", latency),
            ("signals", signals),
            ("want", _want(s)),
            ("owner", s.get("owner") or "-"),
            ("why", why_text(s, now) or "-"),
            ("override", _override(s.get("override"))),
        ]
    )
    row_id = _e(f"server-{pool}-{name}")
    ramp = ' class="ramping"' if ramping else ""
    return (
        f'<tr id="{row_id}" data-state="{_e(s["lb_state"])}" '
        f'data-owner="{_e(s.get("owner") or "")}"{ramp}>{cells}</tr>'
    )


_HEADER = (
    "server",
    "LB",
    "weight",
    "latency",
    "signals",
    "wants",
    "owner",
    "why",
    "override",
)


def _pool(pool: Mapping[str, Any], now: float) -> str:
    name = pool["name"]
    balance = pool.get("balance") or {}
    imbalance = balance.get("imbalance")
    spread = (
        ""
        if imbalance is None
        else f'<p class="muted">traffic spread against weights: imbalance {_e(imbalance)}</p>'
    )
    head = "".join(f"<th>{_e(h)}</th>" for h in _HEADER)
    rows = "".join(_server_row(name, s, now) for s in pool.get("servers", []))
    return (
        f'<section class="pool" id="{_e(f"pool-{name}")}" '
        f'data-blind="{"true" if pool.get("blind") else "false"}">'
        f"<h2>pool {_e(name)}{_flags(pool)}</h2>{_counts(pool)}{spread}{_alerts(pool)}"
        f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></section>"
    )


def _last_actions(doc: Mapping[str, Any]) -> str:
    done = [
        (s["last_decision"], s["server"])
        for pool in doc["pools"]
        for s in pool.get("servers", [])
        if s.get("last_decision")
    ]
    done.sort(key=lambda pair: pair[0]["at"], reverse=True)
    if not done:
        return '<section id="actions"><h2>Last actions</h2><p class="muted">none</p></section>'
    columns = ("when", "server", "action", "rule", "reason")
    rows = "".join(
        '<tr class="action">'
        + _cells(
            zip(columns, (utc(d["at"]), sid, d["action"], d["rule"], d["reason"]), strict=True)
        )
        + "</tr>"
        for d, sid in done[:LAST_ACTIONS]
    )
    head = "".join(f"<th>{h}</th>" for h in columns)
    return (
        '<section id="actions"><h2>Last actions</h2>'
        f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></section>"
    )


def render_page(doc: Mapping[str, Any], refresh: int, now: float) -> str:
    """The page of a status document; ``refresh`` seconds between reloads, ``now`` wall time."""
    pools = "".join(_pool(p, now) for p in doc["pools"])
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{int(refresh)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>lbhealthd status</title><style>{_STYLE}</style></head><body>"
        f"<h1>lbhealthd status</h1>{_daemon(doc['daemon'], now)}{_daemon_alerts(doc['daemon'])}"
        f"{pools}{_last_actions(doc)}"
        f'<p class="muted">read-only; reloads every {int(refresh)}s. '
        "The same data: /status (JSON), <code>lbhealthd status</code>.</p>"
        "</body></html>\n"
    )
