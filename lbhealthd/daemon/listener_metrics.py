"""The daemon's listeners (the HTTP listener, the control socket) as metrics, read when
``/metrics`` is scraped: connections open, and connections closed by their limits."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lbhealthd.serving.guard import ConnectionGuard


class ListenerMetrics(Collector):
    """``lbhealthd_listener_connections{listener}`` and
    ``lbhealthd_listener_connections_closed_total{listener,reason}`` of every guard watched."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.guards: dict[str, ConnectionGuard] = {}
        registry.register(self)

    def watch(self, guard: ConnectionGuard) -> None:
        self.guards[guard.name] = guard

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        open_now = GaugeMetricFamily(
            "lbhealthd_listener_connections",
            "Connections open on a listener of the daemon (http, control).",
            labels=("listener",),
        )
        closed = CounterMetricFamily(
            "lbhealthd_listener_connections_closed",
            "Connections a listener closed by its limits: evicted (the longest idle one, to make "
            "room), refused (every one busy), idle_closed (idle past the timeout).",
            labels=("listener", "reason"),
        )
        for name, guard in sorted(self.guards.items()):
            open_now.add_metric((name,), guard.open)
            for reason, count in sorted(guard.totals.items()):
                closed.add_metric((name, reason), count)
        yield open_now
        yield closed

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        return self.collect()
