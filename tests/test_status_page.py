"""The status page renders the status document: drained servers with who, why and until when,
the pool's counts and alerts, and every operator's text escaped."""

from __future__ import annotations

import re
from dataclasses import replace
from html.parser import HTMLParser

from lbhealthd import status
from lbhealthd.engine import PoolSettings
from lbhealthd.model import (
    Action,
    ActionKind,
    AdminState,
    Member,
    OpState,
    Override,
    OverrideKind,
    Reason,
    Rule,
)
from lbhealthd.monitors.audit import Finding, FindingKind
from lbhealthd.report import LastAction, PoolReport, RoundReport
from lbhealthd.status_page import refresh_seconds, render_page
from lbhealthd.store import OwnedEntry
from lbhealthd.testing import ok, sid

WALL = 1_796_000_000.0  # 2026-11-30 00:53:20 UTC
MONO = 500.0
HOSTILE = "<script>alert('x')</script> & \"quoted\""


class Page(HTMLParser):
    """The elements of a page (or of a browser's rendered DOM) by id, with their attributes and
    text, and every tag in order."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.attrs: dict[str, dict[str, str | None]] = {}
        self.text: dict[str, str] = {}
        self.open: list[str | None] = []
        self.tags: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        ident = dict(attrs).get("id")
        if ident is not None:
            self.attrs[ident] = dict(attrs)
            self.text[ident] = ""
        if tag not in ("meta", "br", "link"):  # elements without an end tag
            self.open.append(ident)

    def handle_endtag(self, tag: str) -> None:
        if self.open:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        for ident in self.open:
            if ident is not None:
                self.text[ident] += data


def member(name: str, admin: AdminState = AdminState.READY, weight: int = 100) -> Member:
    return Member(sid(f"api/{name}"), "127.0.0.1", 8000, admin, OpState.UP, weight, 100)


def report(name: str = "s2", reason: str = "disk full on /var", who: str = "alice") -> RoundReport:
    """Pool api: s1 ready, ``name`` drained by an operator's override, s3 drained by lbhealthd,
    s4 ramping."""
    members = [
        member("s1"),
        member(name, AdminState.DRAIN),
        member("s3", AdminState.DRAIN),
        member("s4", weight=57),
    ]
    drained = sid(f"api/{name}")
    fall = Reason(Rule.FALL, "cpu 0.97 >= 0.9 for 3 samples")
    pool = PoolReport("api", PoolSettings("api"), {m.id: m for m in members})
    return RoundReport(
        (pool,),
        rounds=42,
        finished_at=MONO - 0.1,
        samples={sid("api/s1"): ok("api/s1", MONO - 0.2, cpu=0.31, latency_ms=12.0)},
        owned={
            drained: OwnedEntry(drained, AdminState.DRAIN, WALL - 60, "override"),
            sid("api/s3"): OwnedEntry(sid("api/s3"), AdminState.DRAIN, WALL - 30, "fall"),
        },
        overrides={
            drained: Override(drained, OverrideKind.DRAIN, reason, who, WALL - 60, WALL + 3600)
        },
        last_action={
            sid("api/s3"): LastAction(Action(sid("api/s3"), ActionKind.DRAIN, fall), WALL - 30)
        },
    )


def page_of(r: RoundReport) -> str:
    return render_page(status.document(r, WALL, MONO), 2, WALL)


def test_a_drained_server_is_shown_with_who_why_and_until_when() -> None:
    """The drained server's row has its state, owner, the table's why text and the override's
    expiry in UTC; the pool's counts tell in, out and by whose hand."""
    html = page_of(report())
    page = Page(html)
    row = page.attrs["server-api-s2"]
    assert (row["data-state"], row["data-owner"]) == ("drain", "override")
    assert (
        "drain by alice, until 01:53 UTC (in 1h): disk full on /var" in page.text["server-api-s2"]
    )
    assert "until 2026-11-30 01:53:20 UTC" in page.text["server-api-s2"]
    assert page.attrs["server-api-s1"]["data-state"] == "ready"
    assert "cpu=0.31" in page.text["server-api-s1"] and "12ms" in page.text["server-api-s1"]
    assert page.attrs["server-api-s4"].get("class") == "ramping"
    assert "57/100" in page.text["server-api-s4"]
    counts = {k: page.text[f"pool-api-{k}"] for k in ("in", "out", "by-lbhealthd", "by-operator")}
    assert counts == {"in": "2", "out": "2", "by-lbhealthd": "1", "by-operator": "1"}
    assert "fall: cpu 0.97 >= 0.9 for 3 samples" in page.text["server-api-s3"]
    assert "cpu 0.97 >= 0.9 for 3 samples" in page.text["actions"]
    assert '<meta http-equiv="refresh" content="2">' in html
    assert "running, pid" in page.text["daemon"]


def test_operator_text_is_escaped() -> None:
    """A reason, an operator's name and a server name with markup, quotes and ampersands come
    out as text: no element, attribute or entity of theirs reaches the page."""
    doc = status.document(report(reason=HOSTILE, who="<b>eve</b> & 'mallory'"), WALL, MONO)
    # The model admits only plain server names; the page escapes them all the same.
    name = "s2\"><script>x</script>'&"
    doc["pools"][0]["servers"][1]["server"] = f"api/{name}"
    html = render_page(doc, 2, WALL)
    page = Page(html)
    assert "script" not in page.tags
    assert page.tags == Page(page_of(report())).tags  # the same elements as a plain page's
    assert "<script>" not in html and "<b>eve" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;" in html
    row_id = f"server-api-{name}"
    assert page.attrs[row_id]["data-state"] == "drain"  # the id survived intact, as text
    assert (
        f"drain by <b>eve</b> & 'mallory', until 01:53 UTC (in 1h): {HOSTILE}"
        in (page.text[row_id])
    )


def test_alerts_blind_and_an_unreadable_lb_are_shown() -> None:
    """A blind pool, an engine warning, an audit finding and an LB error all appear."""
    base = report()
    pool = base.pools[0]
    message = "api/s9 <new> is in HAProxy, not in the pool"
    finding = Finding("api", "s9", FindingKind.UNEXPECTED_SERVER, "absent", "present", message)
    blind = replace(
        pool,
        blind=True,
        lb_error="connect to /run/haproxy.sock: refused",
        warnings=({"rule": "blind", "message": "3 of 4 probes failed"},),
        findings=(finding,),
    )
    page = Page(html := page_of(replace(base, pools=(blind,))))
    assert page.attrs["pool-api"]["data-blind"] == "true"
    assert "BLIND" in page.text["blind"]
    assert "3 of 4 probes failed" in page.text["pool-api"]
    assert "api/s9 <new> is in HAProxy" in page.text["pool-api"]
    assert "connect to /run/haproxy.sock: refused" in page.text["pool-api"]
    assert "LB UNREADABLE" in html


def test_the_page_uses_nothing_from_outside() -> None:
    """No script, stylesheet link, image, font or other URL: the page is one file."""
    html = page_of(report())
    assert not re.search(r"<(script|link|img|iframe|object)\b", html)
    assert not re.search(r"(src|href)=|url\(|@import|https?://", html)


def test_refresh_follows_the_round_interval_and_is_at_least_two_seconds() -> None:
    """The page reloads once a round, never more often than every 2 s."""
    assert [refresh_seconds(s) for s in (0.1, 1.0, 2.0, 2.5, 30.0)] == [2, 2, 2, 3, 30]
