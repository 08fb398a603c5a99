"""File descriptors: the soft limit raised at start, and the listeners' share of it.

systemd starts services with a soft RLIMIT_NOFILE of 1024 unless told otherwise, and a local
user who opens that many connections to a listener leaves none for what the daemon exists to
do: the load balancer's sockets, the state files, the probes. So:

- ``raise_soft_limit`` raises the soft limit to the hard one, or to ``TARGET`` when the hard
  limit is higher (or unlimited); a refusal (a seccomp filter without setrlimit) is logged and
  the limit kept. The unit file sets ``LimitNOFILE=`` so that nothing has to be raised there.
- ``listener_cap`` gives each listener at most ``wanted`` connections and all listeners
  together at most half of the soft limit: the other half is reserved for everything else.
"""

from __future__ import annotations

import resource

import structlog

__all__ = ["TARGET", "listener_cap", "raise_soft_limit", "wanted_soft_limit"]

log = structlog.get_logger("lbhealthd.serving")

TARGET = 65536  # enough for the largest pools' probes; more only costs memory in some libraries


def wanted_soft_limit(soft: int, hard: int, target: int = TARGET) -> int:
    """The soft limit to run with: the hard limit, capped at ``target``; never lower than now."""
    ceiling = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft == resource.RLIM_INFINITY:
        return soft
    return max(soft, ceiling)


def raise_soft_limit(target: int = TARGET) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE as far as ``wanted_soft_limit`` says; (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = wanted_soft_limit(soft, hard, target)
    if wanted != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as exc:
            log.warning(
                "fd_limit_not_raised",
                soft=soft,
                hard=hard,
                wanted=wanted,
                error=str(exc),
                note="set LimitNOFILE= (systemd) or the container's nofile ulimit",
            )
            return soft, hard
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def listener_cap(soft: int, listeners: int, wanted: int) -> int:
    """Connections one of ``listeners`` listeners may hold: ``wanted``, or less so that all of
    them together hold at most half of ``soft`` (at least one each)."""
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft // (2 * max(1, listeners))))
