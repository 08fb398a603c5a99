"""What in a candidate HAProxy configuration would run code when ``haproxy -c`` reads it.

``haproxy -c`` is HAProxy's own parser, and HAProxy acts on some directives while it parses:
``lua-load`` runs a Lua script (HAProxy 2.6 with Lua, as Debian ships it), ``ssl-provider``
loads a shared library. Checking a file must never run code from it, so :func:`refusals`
finds every line that would, and the check does not start HAProxy on such a file.

A line is read the way HAProxy 2.6 reads it (:mod:`.config_words`: leading whitespace including
CR, quotes, escapes such as ``lua\\x2dload``, a ``no``/``default`` prefix, which HAProxy
still dispatches after complaining), and additionally from every CR or NUL in it, so that a
reading stricter than HAProxy's can only refuse more. Refused, with the reason given:

- ``lua-load``, ``lua-load-per-thread``, ``lua-prepend-path`` and every other ``lua-*``
  directive: they run Lua code, or choose which files Lua's ``require`` runs;
- ``ssl-engine``, ``ssl-provider``, ``ssl-provider-path``: they load OpenSSL engines or
  providers, which are shared libraries;
- ``filter opentracing``: it loads a tracer plugin (a shared library) named in a second file
  that this check does not read;
- a directive (or a filter's type) taken from an environment variable: what it becomes is
  not in the file (``setenv`` earlier in the file can set it);
- a line that cannot be split into words (an unmatched quote, a bad escape): HAProxy skips it
  with an error, but lbhealthd does not rely on reading such a line exactly as HAProxy does.

Not refused: ``external-check command`` and ``program`` sections (only a running HAProxy
starts them), ``setenv`` and its kin (once the above are refused, nothing at check time runs
with the environment they set), and directives that read files (certificates, CA and CRL
files, error files, ACL and map files): HAProxy reads those with the caller's rights, which is
why the check should run as an unprivileged user (docs/monitors.md).
"""

from __future__ import annotations

import re

from lbhealthd.drivers.haproxy.config_words import LineError, Words, split_words
from lbhealthd.errors import Refusal

__all__ = ["refusals"]

_LOADS_LIBRARY = {
    "ssl-engine": "loads an OpenSSL engine (a shared library)",
    "ssl-provider": "loads an OpenSSL provider (a shared library)",
    "ssl-provider-path": "chooses where OpenSSL providers (shared libraries) are loaded from",
}
_LUA = {
    "lua-load": "runs a Lua script while HAProxy parses the file",
    "lua-load-per-thread": "runs a Lua script while HAProxy parses the file",
    "lua-prepend-path": "chooses which files Lua's require runs",
}
_OTHER_LUA = "a Lua directive: refused with every lua-* directive"
_FILTERS = {"opentracing": "loads the tracer plugin (a shared library) its own file names"}
_MODIFIERS = ("no", "default")
_RESTART = re.compile("[\r\0]")


def _judge(parsed: Words) -> tuple[str, str] | None:
    """(directive, why) when the line's directive would run code, else None."""
    words, env_from = parsed.words, parsed.env_from
    at = 1 if words and words[0] in _MODIFIERS else 0
    if len(words) <= at:
        return None
    keyword = words[at]
    if env_from is not None and env_from <= at:
        return keyword, "the directive comes from an environment variable"
    if keyword.startswith("lua-"):
        return keyword, _LUA.get(keyword, _OTHER_LUA)
    if keyword in _LOADS_LIBRARY:
        return keyword, _LOADS_LIBRARY[keyword]
    if keyword == "filter" and len(words) > at + 1:
        if env_from is not None and env_from <= at + 1:
            return f"filter {words[at + 1]}", "the filter type comes from an environment variable"
        kind = words[at + 1]
        if kind in _FILTERS:
            return f"filter {kind}", _FILTERS[kind]
    return None


def refusals(data: bytes) -> list[Refusal]:
    """Every line of ``data`` that would run code when HAProxy parses it, in file order."""
    found: list[Refusal] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.decode("latin-1")  # byte for byte, as HAProxy reads it
        starts = [0, *(m.end() for m in _RESTART.finditer(line))]
        for start in starts:
            try:
                judged = _judge(split_words(line[start:]))
            except LineError as exc:
                # HAProxy skips a line it cannot split; refusing it instead means a reading
                # that differs from HAProxy's in an error case can only refuse more.
                judged = "", f"cannot be split into words ({exc}), so what it does is unknown"
            if judged is not None:
                found.append(Refusal(number, *judged))
                break
    return found
