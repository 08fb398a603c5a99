"""What a reload changes: one short line per changed key, for the log and `lbhealthd reload`.

Pools are compared by name, not by position, so reordering the list is no change and a pool
that is added or removed is one line (``pools[web]: added``). Other keys are named by their
field path (``pools[api].fall: 3 -> 4``, ``daemon.round_interval: 1.0 -> 2.0``). Keys the
daemon reads only at start say so, since the reload does not apply them.
"""

from __future__ import annotations

from typing import Any

from lbhealthd.config.models import Config

__all__ = ["START_ONLY", "changes"]

#: Read at start only: a reload that changes them does not apply them (docs/operations.md).
START_ONLY = (
    "daemon.state_dir",
    "daemon.control_socket",
    "daemon.http",
    "daemon.max_connections",
    "daemon.idle_timeout",
    "daemon.log_format",
    "load_balancer",
)

MAX_VALUE = 60  # characters of a value shown; a long list is cut


def _value(v: object) -> str:
    text = repr(v) if isinstance(v, str) else str(v)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."


def _diff(path: str, old: Any, new: Any, out: list[str]) -> None:
    if old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            child = f"{path}.{key}"
            if key not in new:
                out.append(f"{child}: removed (was {_value(old[key])})")
            elif key not in old:
                out.append(f"{child}: added ({_value(new[key])})")
            else:
                _diff(child, old[key], new[key], out)
        return
    note = " (read at start only: restart to apply)" if path.startswith(START_ONLY) else ""
    out.append(f"{path}: {_value(old)} -> {_value(new)}{note}")


def changes(old: Config, new: Config) -> list[str]:
    """The keys ``new`` changes from ``old``, one line each; empty when nothing changed."""
    out: list[str] = []
    before, after = old.model_dump(by_alias=True), new.model_dump(by_alias=True)
    for section in ("daemon", "load_balancer"):
        _diff(section, before[section], after[section], out)
    old_pools = {p["name"]: p for p in before["pools"]}
    new_pools = {p["name"]: p for p in after["pools"]}
    for name, pool in old_pools.items():
        if name not in new_pools:
            out.append(f"pools[{name}]: removed")
        else:
            _diff(f"pools[{name}]", pool, new_pools[name], out)
    out += [f"pools[{name}]: added" for name in new_pools if name not in old_pools]
    return out
