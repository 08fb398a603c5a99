"""Pools counted and worded exactly: a server HAProxy's own check took out, a probe that
timed out, a blind pool with servers out of rotation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lbhealthd.model import AdminState, OpState, ProbeOutcome
from lbhealthd.status import document, why_text
from tests.test_reconciler import Harness, Logs, events


def status_of(h: Harness) -> dict[str, Any]:
    return document(h.reconciler.report, h.wall(), h.mono())


def server(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in doc["pools"][0]["servers"] if s["server"] == f"api/{name}")


async def test_a_server_down_by_haproxys_check_is_named_and_beyond_the_cap_alerts(
    make: Callable[..., Harness],
) -> None:
    """Two servers down by HAProxy's own check are within the cap (2 of 5): each says why it
    is out; a third puts the pool beyond its caps, and the pool has an alert naming all three."""
    h = make()
    for name in ("s2", "s4"):
        h.driver.set_op(name, OpState.DOWN)
    await h.tick()
    doc = status_of(h)
    assert doc["pools"][0]["out"] == 2
    assert why_text(server(doc, "s2")).startswith("out: down by HAProxy's own check")
    assert why_text(server(doc, "s1")) == ""
    assert not [a for a in doc["pools"][0]["alerts"] if a["rule"] == "beyond_cap"]

    h.driver.set_op("s5", OpState.DOWN)
    await h.tick()
    (alert,) = [a for a in status_of(h)["pools"][0]["alerts"] if a["rule"] == "beyond_cap"]
    assert alert["message"].startswith("3 of 5 servers out, beyond the pool's caps")
    assert all(f"{n} (down by HAProxy's own check" in alert["message"] for n in ("s2", "s4", "s5"))


async def test_a_server_put_in_maint_by_hand_says_so(make: Callable[..., Harness]) -> None:
    h = make()
    h.driver.set_by_hand("s3", admin=AdminState.MAINT)
    await h.tick()
    assert why_text(server(status_of(h), "s3")) == "out: maint (set outside lbhealthd)"


async def test_a_probe_that_timed_out_is_not_called_an_overload(
    make: Callable[..., Harness], logs: Logs
) -> None:
    h = make()
    h.probes.fail("s2", outcome=ProbeOutcome.TIMEOUT)
    await h.tick(3)
    assert h.driver.drained() == {"s2"}
    (drained,) = events(logs, "server_drained", "api/s2")
    assert drained["reason"].startswith("3 bad samples in a row (fall 3), the last a failed probe")
    assert "timeout" in drained["reason"] and "overload" not in drained["reason"]


async def test_a_blind_pool_says_how_many_servers_were_not_counted(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """All five probes fail, one server is out by hand: four are counted, and the warning says
    one more was not, so the figures add up to the pool."""
    h = make()
    h.driver.set_by_hand("s5", admin=AdminState.MAINT)
    h.probes.fail("s1", "s2", "s3", "s4", "s5")
    await h.tick()
    (blind,) = events(logs, "pool_blind")
    assert blind["reason"].startswith(
        "pool api: 4 of the 4 probes of servers in rotation failed at once "
        "(1 more out of rotation, not counted)"
    )
    assert blind["evidence"]["pool_size"] == 5


async def test_a_dry_run_status_says_how_many_more_would_be_out(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """In a dry run the LB shows 0 out while the engine counts the drain it decided: the pool
    line says so, and the count agrees with the blocked drain's evidence."""
    from lbhealthd.status import render

    h = make(daemon={"dry_run": True})
    h.probes.set("s1", "s2", "s3", cpu=0.97)
    await h.tick(4)
    doc = status_of(h)
    pool = doc["pools"][0]
    assert (pool["out"], pool["would_be_out"]) == (0, 2)
    blocked = events(logs, "drain_blocked")
    assert blocked and blocked[0]["evidence"]["out"] == pool["out"] + pool["would_be_out"]
    assert "DRY RUN: 2 more would be out" in render(doc)


async def test_a_live_status_has_nothing_that_would_be_out(make: Callable[..., Harness]) -> None:
    h = make()
    h.probes.set("s1", "s2", "s3", cpu=0.97)
    await h.tick(4)
    pool = status_of(h)["pools"][0]
    assert (pool["out"], pool["would_be_out"]) == (2, 0)


async def test_an_endpoint_of_an_ha_pair_that_stops_answering_is_said(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """One endpoint of an HA pair down: the pool is read from the other, and the daemon says
    so once in the log and as an alert in status until the endpoint answers again."""
    from lbhealthd.testing import memory_pool

    h = make(driver=memory_pool("api", 5, endpoints=2))
    await h.tick()
    assert not events(logs, "lb_endpoint_unavailable")
    h.driver.stop_endpoint(1)
    await h.tick(3)
    (down,) = events(logs, "lb_endpoint_unavailable")
    assert down["pool"] == "api" and "connection refused" in down["error"]
    (alert,) = [a for a in status_of(h)["pools"][0]["alerts"] if a["rule"] != "beyond_cap"]
    assert alert["rule"] == "lb_endpoint_unavailable"
    assert alert["message"].startswith("1 endpoint(s) of the load balancer could not be read")
    h.driver.start_endpoint(1)
    await h.tick()
    assert [e["endpoint"] for e in events(logs, "lb_endpoint_available")] == [down["endpoint"]]
    assert status_of(h)["pools"][0]["alerts"] == []


async def test_a_few_failed_probes_among_the_first_do_not_drain_before_the_rest_are_in(
    make: Callable[..., Harness], logs: Logs
) -> None:
    """At start, one server fails, one is well and three have no sample yet: the three are
    taken as failed (the daemon may be the one failing), so nothing is drained until they
    answer; once they answer well, the failing one is drained as usual (the twin)."""
    h = make()
    h.probes.fail("s1")
    h.probes.silence("s3", "s4", "s5")
    await h.tick(6)
    assert h.driver.drained() == set()
    (blind,) = events(logs, "pool_blind")
    assert "3 more with no sample yet, taken as failed" in blind["reason"]
    h.probes.healthy("s3", "s4", "s5")
    await h.tick(4)
    assert h.driver.drained() == {"s1"}
    assert events(logs, "pool_sight_restored")
