"""`lbhealthd reload`: have the running daemon reload its config file, and say how it went.

The file is validated here first (an invalid one is refused with its field paths before the
daemon hears of it), then the daemon is asked over the control socket (``POST /reload``) and
its answer awaited: what changed, or why it refused. A signal could say neither, and would
report success to ``systemctl reload`` for a file the daemon then refused.
"""

from __future__ import annotations

from lbhealthd.config import Config
from lbhealthd.oncall.client import call_daemon
from lbhealthd.oncall.commands import Outcome

__all__ = ["reload"]


async def reload(config: Config, path: str) -> Outcome:
    """Ask the daemon of ``config`` to reload ``path`` (already validated; absolute, since
    the daemon checks it names its own file) and report its
    answer: 0 reloaded, 1 refused or no daemon answering, 2 not the daemon's file."""
    socket = config.daemon.control_socket
    answer = await call_daemon(config, "POST", "/reload", {"path": path})
    if answer is None:
        return Outcome(
            1,
            (
                f"{path}: valid, but no daemon answers on {socket}: nothing was reloaded "
                "(start it, e.g. `systemctl start lbhealthd`; it reads the file then)",
            ),
        )
    code, doc = answer
    if code == 200:
        changed = doc.get("changed") or []
        lines = [f"config reloaded by the running daemon from {doc.get('path')}:"]
        lines += [f"  {c}" for c in changed] or ["  nothing changed"]
        return Outcome(0, tuple(lines), doc)
    message = str(doc.get("error", doc))
    if code == 422:
        return Outcome(1, (message,), doc)
    return Outcome(2 if code == 400 else 1, (f"reload not done: {message}",), doc)
