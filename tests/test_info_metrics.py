"""The daemon's own facts on /metrics: its build, whether it runs dry (following a reload),
and the operators' overrides in force by pool and kind, set by a real reconciler."""

from __future__ import annotations

import platform
from collections.abc import Callable

from lbhealthd import __version__
from lbhealthd.daemon.metrics import Metrics
from lbhealthd.model import Override, OverrideKind
from lbhealthd.testing import sid
from tests.test_reconciler import Harness


def get(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_build_info() -> None:
    """lbhealthd_build_info is 1 with this version and this Python as labels."""
    m = Metrics()
    info = {"version": __version__, "python": platform.python_version()}
    assert get(m, "lbhealthd_build_info", **info) == 1
    assert get(m, "lbhealthd_build_info", version="0.0.0", python=info["python"]) is None


async def test_dry_run_follows_a_reload(make: Callable[..., Harness]) -> None:
    """lbhealthd_dry_run is 0, 1 after a reload to dry_run, and 0 again after the next."""
    h = make()
    m = h.reconciler.metrics
    await h.tick()
    m.observe_round(h.reconciler.report, 0.01)
    assert get(m, "lbhealthd_dry_run") == 0
    dry = h.config.model_copy(
        update={"daemon": h.config.daemon.model_copy(update={"dry_run": True})}
    )
    h.reconciler.reload(dry)
    await h.tick()
    m.observe_round(h.reconciler.report, 0.01)
    assert get(m, "lbhealthd_dry_run") == 1
    h.reconciler.reload(h.config)
    await h.tick()
    m.observe_round(h.reconciler.report, 0.01)
    assert get(m, "lbhealthd_dry_run") == 0


async def test_overrides_by_pool_and_kind(make: Callable[..., Harness]) -> None:
    """Overrides in force are counted by kind, every kind at 0 when there is none; an
    expired one is no longer counted."""
    h = make()
    m = h.reconciler.metrics
    await h.tick()
    m.observe_round(h.reconciler.report, 0.01)
    for kind in ("drain", "maint", "ready"):
        assert get(m, "lbhealthd_overrides", pool="api", kind=kind) == 0
    now = h.wall()
    h.store.put_override(Override(sid("api/s1"), OverrideKind.DRAIN, "disk", "alice", now))
    h.store.put_override(Override(sid("api/s2"), OverrideKind.DRAIN, "disk", "bob", now))
    h.store.put_override(
        Override(sid("api/s3"), OverrideKind.MAINT, "kernel", "carol", now, now + 5.0)
    )
    await h.tick()
    m.observe_round(h.reconciler.report, 0.01)
    assert get(m, "lbhealthd_overrides", pool="api", kind="drain") == 2
    assert get(m, "lbhealthd_overrides", pool="api", kind="maint") == 1
    assert get(m, "lbhealthd_overrides", pool="api", kind="ready") == 0
    h.advance(10.0)
    await h.tick()
    m.observe_round(h.reconciler.report, 0.01)
    assert get(m, "lbhealthd_overrides", pool="api", kind="maint") == 0
    assert get(m, "lbhealthd_overrides", pool="api", kind="drain") == 2
