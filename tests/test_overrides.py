"""An operator's drain with the daemon down, over the in-memory LB: the caps count the drains
recorded but not yet carried out, and the check and the record are one step for every process
that writes state_dir."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lbhealthd.errors import CapRefused
from lbhealthd.model import AdminState, Override, OverrideKind
from lbhealthd.oncall import commands as oncall
from lbhealthd.oncall import direct
from lbhealthd.store import LOCK, Store
from tests.test_reconciler import Harness, sid

_FORK = multiprocessing.get_context("fork")


async def test_concurrent_drains_with_the_daemon_down_stay_within_max_drained(
    make: Callable[..., Harness],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three drains that read the LB at the same moment, in a pool that lets two out: two are
    carried out, the third is refused naming max_drained."""
    h = make()
    monkeypatch.setattr(direct, "make_driver", lambda config, **kw: h.driver)
    h.driver.hold("snapshot", after=True)  # all three have read the LB before any goes on
    drains = [
        asyncio.create_task(oncall.drain(h.config, sid(name), "x", None, False, False))
        for name in ("s1", "s2", "s3")
    ]
    await h.driver.held(3)
    h.driver.release()
    done = await asyncio.gather(*drains, return_exceptions=True)
    refused = [d for d in done if isinstance(d, CapRefused)]
    assert len(refused) == 1 and "max_drained 40%" in str(refused[0])
    assert [d.code for d in done if isinstance(d, oncall.Outcome)] == [0, 0]
    assert len(h.driver.drained()) == 2
    assert len(Store(h.config.daemon.state_dir).load_overrides()) == 2


def _waiting_for(lock: Path) -> bool:
    """Whether a process waits for the flock on ``lock`` (/proc/locks shows it with ``->``)."""
    inode = f":{os.stat(lock).st_ino} "
    return any("->" in line and inode in line for line in Path("/proc/locks").open())


def _another_writer(state_dir: str, record: Override, said: multiprocessing.Queue) -> None:
    """Another on-call command: holds the state lock until a drain waits for it, then records
    ``record`` and lets go. Says when it holds the lock, then whether it saw the drain wait."""
    store = Store(state_dir)
    with store.serialised():
        said.put("locked")
        deadline = time.monotonic() + 10
        waited = False
        while not waited and time.monotonic() < deadline:
            waited = _waiting_for(Path(state_dir) / LOCK)
            time.sleep(0.01)
        store.put_override(record)
    said.put(waited)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs /proc/locks (Linux)")
async def test_a_drain_checks_the_caps_only_once_another_writer_is_done(
    make: Callable[..., Harness],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the daemon down, a drain that has read the LB waits for another process holding
    state_dir's lock before it checks the caps, so the drain that process records meanwhile
    counts: one server out by hand and one recorded leave no room under max_drained."""
    h = make()
    monkeypatch.setattr(direct, "make_driver", lambda config, **kw: h.driver)
    h.driver.set_by_hand("s1", admin=AdminState.DRAIN)
    h.driver.hold("snapshot", after=True)
    drain = asyncio.create_task(oncall.drain(h.config, sid("s3"), "x", None, False, False))
    await h.driver.held(1)
    other = Override(sid("s2"), OverrideKind.DRAIN, "disk", "bob (uid 1001, cli)", time.time())
    said = _FORK.Queue()
    writer = _FORK.Process(target=_another_writer, args=(h.config.daemon.state_dir, other, said))
    writer.start()
    try:
        assert await asyncio.to_thread(said.get, True, 10) == "locked"
        h.driver.release()  # the drain goes on to its check while the other writer holds on
        with pytest.raises(CapRefused, match="max_drained 40%"):
            await asyncio.wait_for(drain, 15)
        assert await asyncio.to_thread(said.get, True, 10) is True  # it did wait
    finally:
        await asyncio.to_thread(writer.join, 10)
    assert set(Store(h.config.daemon.state_dir).load_overrides()) == {sid("s2")}
    assert h.driver.sent() == []


async def test_a_restore_with_the_daemon_down_says_when_the_weight_was_not_set_back(
    make: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server the daemon drained again mid-ramp is left at a slow-start weight; a restore
    with the daemon down whose weight command the LB refuses says the weight was not set
    back, and exits 1; once the LB takes commands, the same restore sets it back."""
    h = make(slow_start="60s")
    h.probes.set("s1", cpu=0.97)
    await h.tick_until(lambda: h.driver.member("s1").admin is AdminState.DRAIN)
    h.probes.set("s1", cpu=0.1)
    await h.tick_until(lambda: h.driver.member("s1").admin is AdminState.READY)
    h.probes.set("s1", cpu=0.97)
    await h.tick_until(lambda: h.driver.member("s1").admin is AdminState.DRAIN)
    left = h.driver.member("s1").weight
    assert left < 100
    monkeypatch.setattr(direct, "make_driver", lambda config, **kw: h.driver)
    h.driver.fail_endpoint(0)
    refused = await oncall.restore(h.config, sid("s1"), None)
    assert refused.code == 1 and "daemon not running; the LB refused:" in refused.lines[0]
    assert f"weight NOT set back: still {left}, 100 expected" in refused.lines[0]
    assert (h.driver.member("s1").admin, h.driver.member("s1").weight) == (AdminState.DRAIN, left)
    h.driver.fail_endpoint(0, calls=0)
    done = await oncall.restore(h.config, sid("s1"), None)
    assert done.code == 0 and f"weight {left} → 100" in done.lines[0]
    assert (h.driver.member("s1").admin, h.driver.member("s1").weight) == (AdminState.READY, 100)


async def test_drain_logs_its_end_readably_and_restore_names_who_without_pid(
    make: Callable[..., Harness],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`override_set` carries the end as a number and as UTC text; the restore's note names
    who set the override without the pid, which the state file keeps."""
    from structlog.testing import capture_logs

    from lbhealthd import overrides
    from lbhealthd.times import iso_utc

    h = make()
    who = "alice (uid 1001, pid 4599)"
    members = {m.id: m for m in (await h.driver.snapshot("api")).members}
    with capture_logs() as logs:
        done = await overrides.drain(
            h.config, h.store, h.reconciler.writer, members, sid("s1"),
            reason="disk full", who=who, now=1_796_235_548.0, for_s=120.0, apply=False,
        )  # fmt: skip
    [event] = [e for e in logs if e["event"] == "override_set"]
    assert event["until"] == 1_796_235_668.0
    assert event["until_utc"] == iso_utc(1_796_235_668.0) == "2026-12-02T18:21:08Z"
    assert done.override is not None and done.override.who == who
    assert Store(h.config.daemon.state_dir).load_overrides()[sid("s1")].who == who
    restored = await overrides.restore(
        h.config, h.store, h.reconciler.writer, members, sid("s1"),
        who="bob (uid 1002, pid 17)", now=1_796_235_560.0, for_s=None, apply=False,
    )  # fmt: skip
    assert "removed the drain override by alice (uid 1001)" in restored.notes[0]
    assert "pid" not in restored.notes[0]
