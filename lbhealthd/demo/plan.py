"""The demo's plan: the misweighted pool, the load over time, and the daemon's config.

The pool's weights are 100,100,1,1,1 where every server should weigh ``EXPECTED_WEIGHT``; the
load steps from a baseline to an overload, and the operator's fix (``FIX_COMMAND``) comes at
``fix_at``. ``FULL`` is the full run, ``SHORT`` the one for CI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbhealthd.demo.load import Profile, Step
from lbhealthd.demo.report import Phases

POOL = "api"
WEIGHTS = {"s1": 100, "s2": 100, "s3": 1, "s4": 1, "s5": 1}  # the misconfiguration
EXPECTED_WEIGHT = 100
FIX_COMMAND = ("audit", "--fix", "--yes")  # the operator's fix: weights back to expected_weights


@dataclass(frozen=True, slots=True)
class Plan:
    """The load over time and when the operator fixes the weights (seconds since the start)."""

    baseline_rate: float = 40.0
    overload_rate: float = 200.0
    overload_at: float = 5.0
    fix_at: float = 40.0
    end: float = 60.0

    def profile(self) -> Profile:
        steps = (Step(0.0, self.baseline_rate), Step(self.overload_at, self.overload_rate))
        return Profile(steps, self.end)

    def phases(self) -> Phases:
        return Phases(self.overload_at, self.fix_at, self.end)


FULL = Plan()
SHORT = Plan(fix_at=11.0, end=16.0)


def daemon_config(
    out: Path, lb_socket: str, http_port: int, *, enforce: bool = False
) -> dict[str, Any]:
    """The lbhealthd configuration the demo runs the daemon with (``enforce``: with
    ``enforce_weights`` on, the daemon sets the weights back to ``EXPECTED_WEIGHT`` itself)."""
    return {
        "daemon": {
            "state_dir": str(out / "state"),
            "control_socket": str(out / "control.sock"),
            "http": f"127.0.0.1:{http_port}",
            "log_format": "json",
            "round_interval": "250ms",
        },
        "load_balancer": {"type": "haproxy", "haproxy": {"sockets": [lb_socket], "timeout": "1s"}},
        "pools": [
            {
                "name": POOL,
                "probe": {
                    "url": "http://{address}:{port}/health",
                    "interval": "500ms",
                    "timeout": "400ms",
                    "load_fields": {"load": "load"},
                },
                "overload": {
                    "load": {"high": 1.0, "low": 0.6},
                    "latency_ms": {"high": 300, "low": 100},
                },
                "fall": 3,
                "rise": 3,
                "min_drain": "5s",
                "flap_max_hold": "10s",
                "slow_start": "5s",
                "max_drained": "40%",
                "min_in_service": 2,
                "expected_weights": {"default": EXPECTED_WEIGHT},
                "enforce_weights": enforce,
                "balance_alert": {"factor": 2.0, "for": "3s", "min_sessions": 50},
            }
        ],
    }
