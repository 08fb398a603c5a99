"""The config's value types: durations, shares, safe names and load-balancer socket addresses.

Each parser takes what YAML gives (a number or a string such as ``500ms`` or ``40%``) and
returns the plain value or raises ValueError with a message fit for the operator; the
``Annotated`` aliases hand them to pydantic as before-validators.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator

from lbhealthd.errors import InvalidName
from lbhealthd.model import check_name

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"number too large (got {str(value)[:20]}...)") from None


def parse_duration(value: object) -> float:
    """``500ms``, ``2s``, ``1.5m``, ``10m``, ``1h``, ``1d`` or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 500ms, 2s or 10m (got {value!r})")
    if isinstance(value, int | float):
        seconds = _as_float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.fullmatch(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration like 500ms, 2s or 10m (got {value!r})")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"must be a non-negative duration (got {value!r})")
    return seconds


def parse_share(value: object) -> float:
    """``40%`` or ``0.4`` → 0.4. A bare number above 1 is refused, not guessed at."""
    if isinstance(value, bool):
        raise ValueError(f"expected a share like 40% or 0.4 (got {value!r})")
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            share = float(value.strip()[:-1]) / 100.0
        except ValueError:
            raise ValueError(f"expected a share like 40% or 0.4 (got {value!r})") from None
    elif isinstance(value, int | float):
        share = _as_float(value)
    else:
        raise ValueError(f"expected a share like 40% or 0.4 (got {value!r})")
    if not (0.0 <= share <= 1.0) or math.isnan(share):
        raise ValueError(f"must be between 0% and 100% (got {value!r})")
    return share


def parse_mark(value: object) -> object:
    """A mark as a number, or a percentage read as a fraction (``90%`` → 0.9, the scale of a
    load field reported as a fraction, like the agent's ``cpu``); anything else is left to the
    number check."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / 100.0
        except ValueError:
            raise ValueError(
                f"expected a number or a percentage like 90% (got {value!r})"
            ) from None
    return value


def safe_name(value: object) -> str:
    """``value`` if it is a name lbhealthd accepts (``check_name``), else ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"expected a name (got {value!r})")
    try:
        return check_name(value)
    except InvalidName as exc:
        raise ValueError(str(exc)) from None


Duration = Annotated[float, BeforeValidator(parse_duration)]
Share = Annotated[float, BeforeValidator(parse_share)]
Mark = Annotated[float, BeforeValidator(parse_mark)]
SafeName = Annotated[str, BeforeValidator(safe_name)]

_SOCKET_RE = re.compile(r"unix:(/.+)|tcp:(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})")


def check_socket(value: str) -> str:
    """``unix:/abs/path`` or ``tcp:HOST:PORT``; anything else raises ValueError."""
    m = _SOCKET_RE.fullmatch(value)
    if m is None:
        raise ValueError(f"expected unix:/PATH or tcp:HOST:PORT (got {value!r})")
    if m.group(3) is not None and not 0 < int(m.group(3)) < 65536:
        raise ValueError(f"port out of range in {value!r}")
    return value
