"""Validation errors as problems an operator can act on: a field path and a line of the file.

``index_lines`` maps every field path of the YAML document (``pools[0].fall``) to its line and
collects keys given twice; ``to_problem`` words one pydantic error for that path, with the line
of the field or of its closest ancestor present in the file.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from lbhealthd.errors import Problem

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.:-]+")


def _key_text(key: object) -> str:
    text = str(key)
    return text if _PLAIN_KEY.fullmatch(text) else repr(text)


def index_lines(
    node: yaml.Node,
    path: str,
    lines: dict[str, int],
    duplicates: list[Problem],
    visited: set[int],
) -> None:
    """Record the line of ``node`` and of everything under it in ``lines``, by field path;
    a key given twice in one mapping goes to ``duplicates``."""
    lines.setdefault(path, node.start_mark.line + 1)
    if id(node) in visited:  # an alias: its lines were indexed where it was defined
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = _key_text(key_node.value)
            child = f"{path}.{key}" if path else key
            if key in seen:
                duplicates.append(
                    Problem(
                        child, "key appears twice in the same mapping", key_node.start_mark.line + 1
                    )
                )
            seen.add(key)
            lines[child] = key_node.start_mark.line + 1
            index_lines(value_node, child, lines, duplicates, visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            index_lines(item, f"{path}[{i}]", lines, duplicates, visited)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = _key_text(part)
            out += f".{part}" if out else part
    return out or "(top)"


def to_problem(err: Any, lines: dict[str, int]) -> Problem:
    """One pydantic error (an item of ``ValidationError.errors()``) as a Problem."""
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    path = _path(loc)
    kind, got, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "missing":
        message = "is required"
    elif kind == "extra_forbidden":
        message = "unknown key (check the spelling against config.example.yaml)"
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {
            "greater_than_equal": ">=",
            "greater_than": ">",
            "less_than_equal": "<=",
            "less_than": "<",
        }[kind]
        bound = next(iter(ctx.values()))
        message = f"must be {op} {bound} (got {got!r})"
    elif kind == "value_error":
        message = str(ctx.get("error", err["msg"]))
    elif kind == "literal_error":
        message = f"must be one of {ctx.get('expected')} (got {got!r})"
    else:
        message = f"{err['msg'][:1].lower()}{err['msg'][1:]} (got {got!r})"
    return Problem(path, message, _nearest_line(path, lines))


def _nearest_line(path: str, lines: dict[str, int]) -> int | None:
    """The line of ``path`` or of its closest ancestor present in the file."""
    while path not in lines:
        parent = re.sub(r"(\.[^.\[]+|\[\d+\]|^[^.\[]+)$", "", path)
        if parent == path:
            return None
        path = parent
    return lines[path]
