"""The load balancer's own counters for a server, as signals merged into its probe sample."""

from __future__ import annotations

from lbhealthd.model import Member, Sample

#: The signals the LB's counters give (HAProxy's ``qcur``, ``scur`` and ``rate``).
LB_SIGNALS = ("lb_queue", "lb_sessions", "lb_rate")


def lb_signals(member: Member) -> dict[str, float]:
    """Return the LB's queue, current sessions and session rate for ``member`` as signals."""
    return {
        "lb_queue": float(member.queue),
        "lb_sessions": float(member.sessions),
        "lb_rate": float(member.session_rate),
    }


def merge(sample: Sample, member: Member | None) -> Sample:
    """Return ``sample`` with the LB's signals for ``member`` added; its outcome is kept."""
    if member is None:
        return sample
    # Built directly: this runs for every server every round (dataclasses.replace is slower).
    signals = {
        **sample.signals,
        "lb_queue": float(member.queue),
        "lb_sessions": float(member.sessions),
        "lb_rate": float(member.session_rate),
    }
    return Sample(sample.server, sample.at, sample.outcome, signals, sample.detail)
