"""Split a line of an HAProxy configuration into words the way HAProxy 2.6 does.

HAProxy reads a configuration line by line (lines end at LF). It skips the line's leading
whitespace, then cuts words (``parse_line`` in its source) until a NUL, CR or LF:

- unquoted spaces, tabs, vertical tabs and form feeds separate words; a run of them (CR
  included) is one separator;
- ``#`` outside quotes starts a comment;
- ``"..."`` quotes weakly: ``$NAME``, ``${NAME}``, ``${NAME-default}`` and ``${NAME[*]}`` (which
  may expand into several words) take text from the environment there;
- ``'...'`` quotes strongly: nothing inside is interpreted;
- outside single quotes a backslash escapes a space, ``\\``, ``#``, ``'``, ``"`` and, inside
  double quotes, ``$``; ``\\t``, ``\\n``, ``\\r`` and ``\\xNN`` stand for those characters; any
  other backslash is kept as is;
- a word is a C string: it ends at its first NUL (``\\x00``).

Environment variables are not expanded here: their value is what the checking process has, not
what this file says. :attr:`Words.env_from` says from which word on HAProxy's words may differ
from these, which keep the variable's reference as written (``${NAME}``).

A line HAProxy cannot split (an unmatched quote or brace, a bad ``\\x`` escape or variable name)
raises :class:`LineError`; HAProxy reports it and skips that line.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

__all__ = ["LineError", "Words", "split_words"]

_SEPARATORS = " \t\v\f"  # C isspace() in the C locale, less the line ends
_SPACE_RUN = " \t\v\f\r\n"  # what a separator run skips (C isspace())
_LINE_END = "\0\r\n"
_ESCAPED = {" ": " ", "\\": "\\", "t": "\t", "n": "\n", "r": "\r", "#": "#", "'": "'", '"': '"'}
_NAME_START = frozenset(string.ascii_letters + "_.")
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_")
_PSEUDO_VARIABLES = frozenset({".LINE", ".FILE", ".SECTION"})
_HEX = frozenset(string.hexdigits)


class LineError(ValueError):
    """A line HAProxy refuses to split into words; it reports it and skips the line."""


@dataclass(frozen=True, slots=True)
class Words:
    """The words of one line. ``env_from`` is the index of the first word that takes text from
    an environment variable (it and the words after it may differ in HAProxy), or None."""

    words: tuple[str, ...]
    env_from: int | None = None


def _variable(text: str, i: int) -> int:
    """The index just past the variable reference that starts at ``text[i]`` (after ``$``)."""
    n = len(text)
    brace = i < n and text[i] == "{"
    if brace:
        i += 1
    if i >= n or text[i] not in _NAME_START:
        raise LineError("forbidden first character in an environment variable name")
    start = i
    if text[i] == ".":
        i += 1
    while i < n and text[i] in _NAME_CHARS:
        i += 1
    if text[start] == "." and text[start:i] not in _PSEUDO_VARIABLES:
        raise LineError(f"unknown pseudo-variable {text[start:i]!r}")
    if not brace:
        return i
    if text.startswith("[", i):
        if not text.startswith("[*]", i):
            raise LineError("invalid word expansion (only [*] is allowed)")
        i += 3
    if text.startswith("-", i):  # a default value runs to the closing brace, quotes and all
        end = text.find("}", i)
        if end < 0 or "\0" in text[i:end]:
            raise LineError("unmatched brace in an environment variable reference")
        return end + 1
    if not text.startswith("}", i):
        raise LineError("unmatched brace in an environment variable reference")
    return i + 1


def split_words(line: str) -> Words:
    """The words HAProxy makes of ``line`` (one line, without its LF); see the module doc."""
    text = line.lstrip(_SPACE_RUN)
    words: list[str] = []
    word: list[str] = []
    env_from: int | None = None
    squote = dquote = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _LINE_END:
            break
        if c == "#" and not squote and not dquote:
            break
        if c == '"' and not squote:
            dquote = not dquote
            i += 1
        elif c == "'" and not dquote:
            squote = not squote
            i += 1
        elif c == "\\" and not squote:
            nxt = text[i + 1] if i + 1 < n else ""
            if nxt in _ESCAPED:
                word.append(_ESCAPED[nxt])
                i += 2
            elif nxt == "$" and dquote:
                word.append("$")
                i += 2
            elif nxt == "x":
                digits = text[i + 2 : i + 4]
                if len(digits) < 2 or not set(digits) <= _HEX:
                    raise LineError("truncated or invalid \\x escape")
                word.append(chr(int(digits, 16)))
                i += 4
            else:
                word.append("\\")
                i += 1
        elif c in _SEPARATORS and not squote and not dquote:
            while i < n and text[i] in _SPACE_RUN:
                i += 1
            words.append("".join(word))
            word = []
        elif c == "$" and dquote:
            end = _variable(text, i + 1)
            if env_from is None:
                env_from = len(words)
            word.append(text[i:end])
            i = end
        else:
            word.append(c)
            i += 1
    if squote or dquote:
        raise LineError("unterminated quote")
    if word:
        words.append("".join(word))
    return Words(tuple(w.split("\0", 1)[0] for w in words), env_from)
