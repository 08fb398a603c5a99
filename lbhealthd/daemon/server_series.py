"""The per-server gauges of ``/metrics``, built when they are read from the last round's report.

They are not kept as prometheus_client series objects: about ten series per server would cost
memory and time every round on large pools; as a collector they cost nothing between scrapes,
and a scrape during a round shows them as the last round left them, in step with the per-pool
series of that round.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lbhealthd.model import AdminState, Desired, Member, Sample, ServerId
from lbhealthd.probes.lbstats import merge
from lbhealthd.report import RoundReport

__all__ = ["ServerSeries"]

_POOL_SERVER = ("pool", "server")


_PoolView = tuple[
    str, Mapping[ServerId, Member], dict[ServerId, Sample], Mapping[ServerId, Desired]
]


class ServerSeries(Collector):
    """The per-server gauges, built on each scrape from the reconciler's view at the end of
    the last round (see above), so that they agree with the per-pool series of that round."""

    def __init__(self) -> None:
        # Per pool, in name order: its members as the round read them, their newest samples
        # then, and the desired states of the last round that decided the pool.
        self._pools: list[_PoolView] = []

    def update(self, r: RoundReport) -> None:
        self._pools = []
        for pool in sorted(r.pools, key=lambda p: p.name):
            members = pool.members
            samples = {sid: s for sid in members if (s := r.samples.get(sid)) is not None}
            desired = {sid: d for sid in members if (d := r.desired.get(sid)) is not None}
            self._pools.append((pool.name, members, samples, desired))

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "lbhealthd_server_state",
                "1 for the server's admin state in the LB (ready, drain, maint), 0 for the others.",
                labels=(*_POOL_SERVER, "state"),
            ),
            GaugeMetricFamily(
                "lbhealthd_server_weight", "The server's weight in the LB.", labels=_POOL_SERVER
            ),
            GaugeMetricFamily(
                "lbhealthd_server_desired_in_service",
                "1 when lbhealthd wants the server in rotation, 0 when it wants it out.",
                labels=_POOL_SERVER,
            ),
            GaugeMetricFamily(
                "lbhealthd_server_signal",
                "Load signals of the server's latest probe, with the LB's own (lb_queue ...).",
                labels=(*_POOL_SERVER, "signal"),
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        state, weight, desired, signal = families
        states = [(s, s.value) for s in AdminState]
        for pool, members, samples, wanted in self._pools:
            for sid, member in members.items():
                name = sid.server
                for admin, text in states:
                    state.add_metric((pool, name, text), 1 if member.admin is admin else 0)
                weight.add_metric((pool, name), member.weight)
                want = wanted.get(sid)
                if want is not None:
                    in_service = want.admin is AdminState.READY
                    desired.add_metric((pool, name), 1 if in_service else 0)
                sample = samples.get(sid)
                if sample is not None:
                    for key, value in merge(sample, member).signals.items():
                        signal.add_metric((pool, name, key), value)
        return families
