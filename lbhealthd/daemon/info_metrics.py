"""The daemon's own facts as metrics: its build, whether it runs dry, and the operators'
overrides in force. Kept apart from the round's figures (lbhealthd.daemon.metrics), which
create it on their registry and feed it each round's report."""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Gauge

from lbhealthd import __version__
from lbhealthd.model import OverrideKind
from lbhealthd.report import RoundReport


class InfoMetrics:
    """``lbhealthd_build_info``, ``lbhealthd_dry_run`` and ``lbhealthd_overrides``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        build = Gauge(
            "lbhealthd_build_info",
            "Always 1; the labels say which lbhealthd and which Python run.",
            ("version", "python"),
            registry=registry,
        )
        build.labels(__version__, platform.python_version()).set(1)
        self.dry_run = Gauge(
            "lbhealthd_dry_run",
            "1 while the daemon decides and logs but sends nothing to the LB (follows reloads).",
            registry=registry,
        )
        self.overrides = Gauge(
            "lbhealthd_overrides",
            "Operators' overrides in force, by pool and kind (drain, maint, ready: a keep-in).",
            ("pool", "kind"),
            registry=registry,
        )

    def observe(self, r: RoundReport) -> None:
        """Set from a round's report: every pool of the config has every kind, at 0 when it
        has none (an absent series would read as "no data"); a pool gone from the config has
        no series."""
        self.dry_run.set(1 if r.dry_run else 0)
        counts = {(p.name, k.value): 0 for p in r.pools for k in OverrideKind}
        for sid, override in r.overrides.items():
            key = (sid.pool, override.kind.value)
            if key in counts:
                counts[key] += 1
        self.overrides.clear()
        for (pool, kind), n in sorted(counts.items()):
            self.overrides.labels(pool, kind).set(n)
