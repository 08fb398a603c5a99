"""Text that is safe to show on a terminal, one line per line.

Reasons, operator names, probe details and HAProxy's messages are free text that someone else
wrote: a reason with a newline and ANSI escape codes could forge a row of ``lbhealthd status``
or a log line, recolour the screen or hide what follows. Before any such text is printed for a
person it goes through :func:`printable`: every character Python does not call printable
(control characters such as newline, tab and ESC, the C1 controls, bidirectional and other
format characters, line and paragraph separators, lone surrogates, unassigned code points) is
shown as a Python-style escape (``\\n``, ``\\x1b``, ``\\u202e``). Letters of any script stay as
they are, and so does the backslash: the escapes are for reading, not for parsing back.

JSON output needs none of this: the JSON encoder escapes control characters itself.
"""

from __future__ import annotations

__all__ = ["printable"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every non-printable character shown as an escape; a space stays."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)
