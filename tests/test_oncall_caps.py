"""What a drain refused by the caps, or forced past them, says: which servers are out and who
took them out; that the pool is now beyond its cap. Over the in-memory LB (daemon down) and a
real HAProxy (through the daemon)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lbhealthd.errors import CapRefused
from lbhealthd.model import AdminState
from lbhealthd.oncall import commands as oncall
from lbhealthd.oncall import direct
from tests.daemon_harness import LBView, running, wait_for
from tests.fixtures_haproxy import ApiServers, HAProxyHandle
from tests.test_oncall import cli, config_of, write_config
from tests.test_reconciler import Harness, sid


async def test_a_refused_drain_names_who_took_each_server_out(
    make: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused at max_drained, a drain names the pool's cap and each server out with who took
    it out: an override's author and reason, or a state lbhealthd did not set."""
    h = make()
    monkeypatch.setattr(direct, "make_driver", lambda config, **kw: h.driver)
    h.driver.set_by_hand("s1", admin=AdminState.MAINT)
    assert (await oncall.drain(h.config, sid("s3"), "deploy", None, False, False)).code == 0
    with pytest.raises(CapRefused) as refused:
        await oncall.drain(h.config, sid("s5"), "slow", None, False, False)
    who = direct.who()
    assert str(refused.value) == (
        "refused: api/s5 stays in: pool api allows 2 of 5 out (max_drained 40%), and 2 are "
        f"out: api/s1 (maint, not set by lbhealthd), api/s3 (drained by {who}: deploy); use "
        "--force to go beyond"
    )
    assert h.driver.drained() == {"s3"}


async def test_a_refused_drain_names_min_in_service(
    make: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused at min_in_service, the words name that floor and the server out."""
    h = make(max_drained="100%", min_in_service=4)
    monkeypatch.setattr(direct, "make_driver", lambda config, **kw: h.driver)
    h.driver.set_by_hand("s2", admin=AdminState.DRAIN)
    with pytest.raises(CapRefused) as refused:
        await oncall.drain(h.config, sid("s4"), "slow", None, False, False)
    assert str(refused.value) == (
        "refused: api/s4 stays in: pool api keeps at least 4 of 5 in rotation (min_in_service "
        "4), and 1 is out: api/s2 (drain, not set by lbhealthd); use --force to go beyond"
    )


async def test_a_forced_drain_says_the_pool_is_beyond_its_cap(
    make: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--force past max_drained drains and warns that the pool is beyond its cap; a forced
    drain within the caps warns nothing."""
    h = make()
    monkeypatch.setattr(direct, "make_driver", lambda config, **kw: h.driver)
    within = await oncall.drain(h.config, sid("s1"), "x", None, True, False)
    assert within.code == 0 and within.warnings == ()
    assert (await oncall.drain(h.config, sid("s2"), "x", None, False, False)).code == 0
    beyond = await oncall.drain(h.config, sid("s3"), "x", None, True, False)
    assert beyond.code == 0
    assert beyond.warnings == (
        "api is now 3 out of 5, beyond max_drained 40% (2 allowed): on you (--force)",
    )
    assert len(h.driver.drained()) == 3


@pytest.mark.integration
async def test_cap_messages_through_the_daemon(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """Through the daemon, a refusal names a server lbhealthd drained with its reason and one
    an operator drained with theirs; the forced drain warns on stderr, and succeeds."""
    path = write_config(tmp_path, haproxy.socket)
    lb = LBView(haproxy.socket)
    async with running(config_of(path)):
        api_servers.set(0, cpu=0.95)
        await wait_for(lambda: _drained(lb, {"s1"}), 5, "s1 drained by lbhealthd")
        code, _, err = await cli("drain", "api/s3", "-c", str(path), "--reason", "deploy")
        assert code == 0, err
        code, out, err = await cli("drain", "api/s5", "-c", str(path), "--reason", "slow")
        assert code == 1 and not out
        assert err.startswith(
            "refused: api/s5 stays in: pool api allows 2 of 5 out (max_drained 40%), and 2 are "
            "out: api/s1 (drained by lbhealthd: 3 overloaded samples in a row (fall 3): cpu "
            "0.95 >= 0.9), api/s3 (drained by "
        )
        assert ": deploy); use --force to go beyond" in err
        code, out, err = await cli(
            "drain", "api/s5", "-c", str(path), "--reason", "slow", "--force"
        )
        assert code == 0 and "via the running daemon" in out, err
        assert err.strip() == (
            "warning: api is now 3 out of 5, beyond max_drained 40% (2 allowed): on you (--force)"
        )
        assert await lb.drained() == {"s1", "s3", "s5"}


async def _drained(lb: LBView, names: set[str]) -> bool:
    return await lb.drained() == names
