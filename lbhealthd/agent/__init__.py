"""`lbhealthd agent`: report this host's (or container's) load to lbhealthd and to HAProxy.

The agent runs beside one API server and serves two read-only views of the same reading:

- **HTTP** ``GET /health`` → ``{"status": "ok", "cpu": 0.42, "load_per_core": 0.8,
  "memory": 0.55, "cpus": 2.0, "agent": "ready 89%"}``, for the daemon's ``probe.load_fields``.
  Bound to ``--listen`` (loopback by default).
- **HAProxy agent-check** (only with ``--agent-port``): on each connection the agent answers one
  line at once, without waiting for HAProxy's optional ``agent-send`` text, then discards what
  HAProxy sends until it closes (within ``AGENT_TIMEOUT``), so the reply is never reset away.
  HAProxy connects to the server's address (or ``agent-addr``), so the agent's bind address
  (default 127.0.0.1) must be one HAProxy can reach: loopback only works when HAProxy runs on
  the same host.

Readings (each a finite float; a source that fails is left out, never fatal):

- ``cpu``: share of CPU time used, sampled every second in the background. Inside a cgroup v2
  with a CPU quota (``cpu.max``) it is the share of that quota (from ``cpu.stat``), otherwise the
  host's utilisation (psutil). Reported as the mean of the samples of the last ``window``
  seconds (``--window``, default 5 s; 0 reports the latest sample), so one busy second does not
  read as overload (``window``).
- ``load_per_core``: 1-minute load average divided by the host's logical CPUs.
- ``memory``: ``memory.current / memory.max`` under a cgroup memory limit, else the host's share.
- ``cpus``: CPUs this process may use: the cgroup quota (``quota / period``) capped by affinity.

The agent-check reply (``agent_reply``) is always ``ready N%``, with N falling linearly from 100
at ``full_below`` to ``min_weight`` at ``drain_at`` and staying there above it. The agent never
replies ``drain`` (nor ``maint`` or ``down``): it sees one server, not the pool, and agents that
all drained at once would empty it. Whether to take a server out is the daemon's decision,
within the pool's caps, from the same readings on ``/health``. An unknown cpu reads as
``ready 100%``: an agent that cannot see the load does not hold traffic away. Per HAProxy,
``ready`` also clears a drain or maint set on the CLI, which lbhealthd's daemon sees as
``Member.has_agent`` and re-applies. Percentages apply to the server's configured weight and
truncate, so give agent-checked servers ``weight 100`` (or 256): with the default weight 1 any
reply below 100 % is weight 0, a drain by another name.

``load`` is the reading, ``cgroup`` and ``reader`` take it, ``window`` smooths the cpu share,
``reply`` words the agent-check line, ``server`` serves both views and ``command`` runs them
until stopped (``run_agent``).
"""

from lbhealthd.agent.cgroup import (
    Cgroup,
    parse_cpu_max,
    parse_memory_max,
    parse_usage_usec,
    read_cgroup,
)
from lbhealthd.agent.command import run_agent
from lbhealthd.agent.load import Load, LoadSource
from lbhealthd.agent.reader import (
    DEFAULT_CGROUP_ROOT,
    FIRST_SAMPLE,
    SAMPLE_INTERVAL,
    LoadReader,
)
from lbhealthd.agent.reply import Thresholds, agent_reply, agent_weight
from lbhealthd.agent.server import (
    AGENT_TIMEOUT,
    DEFAULT_AGENT_HOST,
    DEFAULT_LISTEN,
    Agent,
    parse_listen,
)
from lbhealthd.agent.window import DEFAULT_WINDOW, MAX_WINDOW, Window, check_window

__all__ = [
    "AGENT_TIMEOUT",
    "DEFAULT_AGENT_HOST",
    "DEFAULT_CGROUP_ROOT",
    "DEFAULT_LISTEN",
    "DEFAULT_WINDOW",
    "FIRST_SAMPLE",
    "MAX_WINDOW",
    "SAMPLE_INTERVAL",
    "Agent",
    "Cgroup",
    "Load",
    "LoadReader",
    "LoadSource",
    "Thresholds",
    "Window",
    "agent_reply",
    "agent_weight",
    "check_window",
    "parse_cpu_max",
    "parse_listen",
    "parse_memory_max",
    "parse_usage_usec",
    "read_cgroup",
    "run_agent",
]
