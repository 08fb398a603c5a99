"""Logging set-up. Only the CLI calls ``configure``; modules just ``structlog.get_logger()``.

One event per line: JSON for collectors (the default, and whenever stderr is not a terminal
unless console is asked for), a readable console rendering for a person at a terminal. On the
console, the event and every text value go through :func:`~lbhealthd.printable.printable`
first, so that a reason or a name with control characters cannot break the line or paint the
terminal (JSON escapes them itself).
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

from lbhealthd.printable import printable


def _printable_text(
    _logger: object, _name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Escape control characters in the event and every text value, for the console."""
    return {
        printable(str(key)): printable(value) if isinstance(value, str) else value
        for key, value in event_dict.items()
    }


def configure(
    fmt: Literal["json", "console"] = "json",
    stream: TextIO | None = None,
    level: int = logging.INFO,
) -> None:
    """Route structlog events to ``stream`` (stderr by default) in the given format."""
    out = stream or sys.stderr
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if fmt == "console":
        processors.append(_printable_text)
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        processors.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(default=str, sort_keys=False)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
