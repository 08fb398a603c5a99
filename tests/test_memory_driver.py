"""The in-memory driver honours the Driver protocol the way HAProxyDriver does, and its knobs do
what the reconciler tests rely on."""

from __future__ import annotations

import asyncio

import pytest

from lbhealthd.drivers import Driver
from lbhealthd.drivers.haproxy.driver import Endpoint, HAProxyDriver
from lbhealthd.drivers.memory import MemoryDriver, MemoryServer
from lbhealthd.errors import InvalidName, Rejected, Unavailable
from lbhealthd.model import AdminState, Member, ServerId
from lbhealthd.testing import memory_pool

S1 = ServerId("api", "s1")


def _is_driver(driver: Driver) -> Driver:
    return driver


async def test_snapshot_lists_the_configured_servers() -> None:
    """A fresh pool is every server ready at its configured weight, consistent."""
    driver = _is_driver(memory_pool("api", 3, weight=50))
    snap = await driver.snapshot("api")
    assert [m.id.server for m in snap.members] == ["s1", "s2", "s3"]
    assert {(m.admin, m.weight, m.initial_weight, m.consistent) for m in snap.members} == {
        (AdminState.READY, 50, 50, True)
    }
    assert snap.epoch == "mem0.1"


async def test_set_state_and_weight_change_every_endpoint_and_are_recorded() -> None:
    """A set reaches both endpoints of a pair and is listed in ``commands``."""
    driver = memory_pool(endpoints=2)
    await driver.set_state(S1, AdminState.DRAIN)
    await driver.set_weight(S1, 7)
    for ep in (0, 1):
        assert (driver.states(endpoint=ep)["s1"], driver.weights(endpoint=ep)["s1"]) == (
            AdminState.DRAIN,
            7,
        )
    assert driver.sent() == [("s1", "drain"), ("s1", 7)]
    assert {c.endpoints for c in driver.commands} == {(0, 1)}


async def test_bad_input_is_refused_as_haproxy_refuses_it() -> None:
    """Unknown servers and pools are Rejected with HAProxy's words; bad names and values never
    reach the LB; nothing refused is recorded."""
    driver = memory_pool()
    with pytest.raises(Rejected, match="No such server"):
        await driver.set_state(ServerId("api", "s9"), AdminState.DRAIN)
    with pytest.raises(Rejected, match="No such backend"):
        await driver.set_weight(ServerId("web", "s1"), 1)
    with pytest.raises(Rejected, match="Can't find backend"):
        await driver.snapshot("web")
    with pytest.raises(InvalidName):
        await driver.snapshot("api;show info")
    with pytest.raises(ValueError, match=r"0\.\.256"):
        await driver.set_weight(S1, 257)
    assert driver.commands == []
    await driver.set_weight(S1, 256)  # the edge is accepted
    assert driver.sent() == [("s1", 256)]


async def test_endpoints_that_disagree_or_are_down_make_the_view_inconsistent() -> None:
    """An HA pair that disagrees on a server marks that server alone; a stopped endpoint marks
    every server and shows as ``-`` in the epoch; both down is Unavailable."""
    driver = memory_pool(endpoints=2)
    driver.set_by_hand("s1", admin=AdminState.MAINT, endpoint=1)
    snap = await driver.snapshot("api")
    assert {m.id.server for m in snap.members if not m.consistent} == {"s1"}
    assert snap.members[0].admin is AdminState.READY  # the first endpoint's view
    driver.stop_endpoint(0)
    snap = await driver.snapshot("api")
    assert all(not m.consistent for m in snap.members)
    assert snap.members[0].admin is AdminState.MAINT
    assert snap.epoch == "-,mem1.1"
    driver.stop_endpoint(1)
    with pytest.raises(Unavailable):
        await driver.snapshot("api")


@pytest.mark.parametrize("changed", [0, 1], ids=["first", "second"])
@pytest.mark.parametrize(
    "change",
    [None, {"admin": AdminState.DRAIN}, {"weight": 3}, "missing", "down"],
    ids=["same", "admin-differs", "weight-differs", "server-missing", "endpoint-down"],
)
async def test_merge_is_haproxys(
    change: object, changed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memory driver merges endpoints exactly as HAProxyDriver does: an HAProxyDriver whose
    two endpoints answer what the memory driver's endpoints hold reads the same members."""
    driver = memory_pool("api", 3, endpoints=2)
    if change == "missing":
        driver.del_server("s1", endpoint=changed)
    elif change == "down":
        driver.stop_endpoint(changed)
    elif isinstance(change, dict):
        driver.set_by_hand("s1", endpoint=changed, **change)
    views: list[list[Member] | None] = [
        None
        if change == "down" and ep == changed
        else [driver.member(name, endpoint=ep) for name in driver.states(endpoint=ep)]
        for ep in (0, 1)
    ]
    haproxy = HAProxyDriver(["unix:/nonexistent/a.sock", "unix:/nonexistent/b.sock"])

    async def read(endpoint: Endpoint, pool: str) -> tuple[str, list[Member], bool]:
        view = views[haproxy.endpoints.index(endpoint)]
        if view is None:
            raise Unavailable("connection refused", endpoint=str(endpoint))
        return "1@1", view, True

    monkeypatch.setattr(haproxy, "_read", read)
    ours, theirs = await driver.snapshot("api"), await haproxy.snapshot("api")
    assert (ours.members, ours.partial) == (theirs.members, theirs.partial)
    assert ours.partial == (frozenset({"s1"}) if change == "missing" else frozenset())


async def test_a_deleted_server_is_gone_from_its_endpoint_until_a_restart() -> None:
    """``del_server`` on one endpoint: reads of that endpoint no longer list it, a command
    for it fails there with HAProxy's words (and lands on the other); a restart brings it
    back from the configuration."""
    driver = memory_pool(endpoints=2)
    driver.del_server("s5", endpoint=1)
    assert "s5" not in driver.states(endpoint=1)
    assert {m.id.server for m in (await driver.snapshot("api")).members} == {
        "s1",
        "s2",
        "s3",
        "s4",
        "s5",
    }
    with pytest.raises(Rejected, match="No such server"):
        await driver.set_state(ServerId("api", "s5"), AdminState.DRAIN)
    assert driver.commands[0].endpoints == (0,)
    driver.restart(1)
    assert "s5" in driver.states(endpoint=1)


async def test_a_hidden_server_is_missing_from_reads_only() -> None:
    """``hide`` leaves a server out of the next reads (of one endpoint, or all) while it still
    takes commands; then it is listed again, as it was."""
    driver = memory_pool()
    await driver.set_state(S1, AdminState.DRAIN)
    driver.hide("s1", reads=2)
    for _ in range(2):
        snap = await driver.snapshot("api")
        assert [m.id.server for m in snap.members] == ["s2", "s3", "s4", "s5"]
    await driver.set_weight(S1, 7)  # still there for commands
    snap = await driver.snapshot("api")
    assert (snap.members[0].id, snap.members[0].admin, snap.members[0].weight) == (
        S1,
        AdminState.DRAIN,
        7,
    )
    pair = memory_pool(endpoints=2)
    pair.hide("s1", endpoint=1)
    snap = await pair.snapshot("api")
    assert {m.id.server for m in snap.members if not m.consistent} == {"s1"}
    assert all(m.consistent for m in (await pair.snapshot("api")).members)


async def test_a_set_failing_on_one_endpoint_is_half_applied() -> None:
    """``fail_endpoint`` makes a set land on the other endpoint and raise Unavailable."""
    driver = memory_pool(endpoints=2)
    driver.fail_endpoint(1, calls=1)
    with pytest.raises(Unavailable, match="1 of 2 endpoints failed"):
        await driver.set_state(S1, AdminState.DRAIN)
    assert (driver.states(endpoint=0)["s1"], driver.states(endpoint=1)["s1"]) == (
        AdminState.DRAIN,
        AdminState.READY,
    )
    assert driver.commands[0].endpoints == (0,)
    await driver.set_state(S1, AdminState.DRAIN)  # the one failure was used up
    assert driver.states(endpoint=1)["s1"] is AdminState.DRAIN


async def test_restart_loses_runtime_state_and_changes_the_epoch() -> None:
    """After a restart every server is as configured again, under a new epoch."""
    driver = memory_pool()
    await driver.set_state(S1, AdminState.DRAIN)
    await driver.set_weight(S1, 10)
    before = (await driver.snapshot("api")).epoch
    driver.restart()
    snap = await driver.snapshot("api")
    assert snap.epoch != before
    assert (snap.members[0].admin, snap.members[0].weight) == (AdminState.READY, 100)


async def test_unavailable_fails_every_call_until_cleared() -> None:
    """``unavailable(error)`` fails reads and writes alike; ``unavailable(None)`` ends it."""
    driver = memory_pool()
    driver.unavailable("socket gone")
    with pytest.raises(Unavailable, match="socket gone"):
        await driver.snapshot("api")
    with pytest.raises(Unavailable):
        await driver.set_state(S1, AdminState.DRAIN)
    driver.unavailable(None)
    await driver.set_state(S1, AdminState.DRAIN)
    assert driver.drained() == {"s1"}


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
async def test_hold_makes_calls_wait_without_time(after: bool) -> None:
    """A held call waits until released, having acted already only with ``after``."""
    driver = memory_pool()
    driver.hold("set_state", after=after)
    task = asyncio.create_task(driver.set_state(S1, AdminState.DRAIN))
    await driver.held()
    assert not task.done()
    assert (driver.drained() == {"s1"}) is after
    await driver.snapshot("api")  # another op is not held
    driver.release()
    await task
    assert driver.drained() == {"s1"} and driver.waiting == 0


async def test_changes_by_hand_are_recorded_apart() -> None:
    """An operator's and an agent's changes are in ``by_hand``, never in ``commands``."""
    driver = memory_pool(agents=["s2"])
    driver.set_by_hand("s1", admin=AdminState.MAINT, weight=5)
    driver.agent_says("api/s2", AdminState.DRAIN)
    with pytest.raises(ValueError, match="no agent-check"):
        driver.agent_says("s3", AdminState.DRAIN)
    assert [(c.server.server, c.who) for c in driver.by_hand] == [
        ("s1", "operator"),
        ("s2", "agent"),
    ]
    assert driver.commands == []
    assert driver.states() == {
        "s1": AdminState.MAINT,
        "s2": AdminState.DRAIN,
        "s3": AdminState.READY,
        "s4": AdminState.READY,
        "s5": AdminState.READY,
    }


def test_several_pools_need_the_pool_named() -> None:
    """With two pools a bare server name is ambiguous and refused."""
    driver = MemoryDriver({"api": [MemoryServer("s1")], "web": [MemoryServer("s1")]})
    with pytest.raises(ValueError, match="POOL/SERVER"):
        driver.set_by_hand("s1", admin=AdminState.DRAIN)
    driver.set_by_hand("web/s1", admin=AdminState.DRAIN)
    assert driver.drained("web") == {"s1"} and driver.drained("api") == set()
