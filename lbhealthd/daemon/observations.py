"""What the engine is told of every server each round: its ``Observation``.

An observation joins the server's newest probe sample (with the LB's counters of this round's
read merged in), what the LB shows of it, what lbhealthd holds of it, any hand change, and the
weight its pool expects. Two things make it more than a join:

- **It costs what changed.** A server whose newest sample, LB member and pool config are the
  very objects of the last round, and whose ownership and override did not change, is told the
  same Observation, built once. At 10,000 servers, rebuilding them all (and merging the
  counters into every sample again) was a large part of a round where nothing changed.
- **The LB's counters are evidence of their own.** In a pool whose overload marks name an LB
  signal (``lb_queue``, ``lb_sessions``, ``lb_rate``), a new read of the counters (the driver
  reads them at their own cadence, ``load_balancer.haproxy.stats_interval``) that came with no
  new probe sample is given to the engine as a sample of its own (``Observation.lb``): HAProxy
  sees a queue build before the next probe does. A read is counted once: either in the new
  probe sample it came with, or on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from lbhealthd.config import PoolConfig
from lbhealthd.engine import Observation
from lbhealthd.model import ByHand, Member, Override, ProbeOutcome, Sample, ServerId
from lbhealthd.pool_audit import expected_weight
from lbhealthd.probes.lbstats import LB_SIGNALS, lb_signals, merge

#: A server's inputs last round (sample, member, pool, held out by lbhealthd, under an
#: override), the Observation built from them, and the read of the LB's counters it last
#: counted (its generation).
_Seen = tuple[Sample | None, Member, PoolConfig, bool, bool, Observation, int]

_OK = ProbeOutcome.OK


class Observations:
    """Builds each round's observations; remembers the last round's inputs."""

    def __init__(self) -> None:
        self._seen: dict[ServerId, _Seen] = {}

    def build(
        self,
        pools: Sequence[PoolConfig],
        members: Mapping[str, Mapping[ServerId, Member]],
        hands: Mapping[ServerId, ByHand],
        latest: Callable[[ServerId], Sample | None],
        holds_out: Callable[[ServerId], bool],
        overrides: Mapping[ServerId, Override],
        now: float,
        counters: Mapping[str, int],
    ) -> dict[ServerId, Observation]:
        """The observations of the servers of ``pools`` (the pools read this round);
        ``counters``: by pool, the generation of the LB's counters read (a new one with every
        new read of them)."""
        observations: dict[ServerId, Observation] = {}
        before: dict[ServerId, _Seen] = self._seen
        seen: dict[ServerId, _Seen] = {}
        for pool in pools:
            counts_lb = any(signal in pool.overload for signal in LB_SIGNALS)
            read = counters.get(pool.name, 0)
            for sid, member in members[pool.name].items():
                raw = latest(sid)
                ours = holds_out(sid)
                overridden = sid in overrides
                hand = hands.get(sid) if hands else None
                last = before.get(sid)
                counted = last[6] if last is not None else read
                due = counts_lb and read != counted
                if (
                    last is not None
                    and not due
                    and hand is None
                    and last[0] is raw
                    and last[1] is member
                    and last[2] is pool
                    and last[3] is ours
                    and last[4] is overridden
                ):
                    obs = last[5]
                else:
                    lb = None
                    if last is None or last[0] is not raw:
                        counted = read  # this read's counters ride in the new probe sample
                    elif due:
                        lb, counted = Sample(sid, now, _OK, lb_signals(member)), read
                    obs = Observation(
                        sample=raw if raw is None else merge(raw, member),
                        external_out=not member.in_rotation and not ours and not overridden,
                        weight=member.weight,
                        full_weight=member.initial_weight,
                        hand=hand,
                        expected=expected_weight(pool, sid.server)
                        if pool.enforce_weights
                        else None,
                        lb=lb,
                    )
                seen[sid] = (raw, member, pool, ours, overridden, obs, counted)
                observations[sid] = obs
        self._seen = seen
        return observations
