"""The entries of the state documents: overrides, ownership entries and engine blob names,
each checked key by key when read and written back in the same shape.

Servers are written as ``POOL/SERVER``, enums by value, times as wall-clock seconds. An entry
that is not exactly what lbhealthd writes raises :class:`InvalidEntry`, which the reader turns
into a StateError naming the file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from lbhealthd.errors import InvalidName
from lbhealthd.model import AdminState, Override, OverrideKind, ServerId
from lbhealthd.store.documents import kind_of

BLOB_NAME = re.compile(r"[a-z_]+")


@dataclass(frozen=True, slots=True)
class OwnedEntry:
    """A change the daemon made in the LB itself: only these may it undo."""

    server: ServerId
    admin: AdminState
    since: float  # wall
    reason: str
    weight: int | None = None  # the weight it set, if it set one


class InvalidEntry(Exception):
    """An entry of a state file is not what it should be (turned into a StateError)."""


_OVERRIDE_KEYS = {"server", "kind", "reason", "who", "created_at"}


def override_from_json(item: object) -> Override:
    d = _fields(item, _OVERRIDE_KEYS, {"expires_at"})
    return Override(
        server=_server(d),
        kind=_choice(d, "kind", OverrideKind),
        reason=_text(d, "reason"),
        who=_text(d, "who"),
        created_at=_number(d, "created_at"),
        expires_at=_optional_number(d, "expires_at"),
    )


def override_to_json(o: Override) -> dict[str, Any]:
    return {
        "server": str(o.server),
        "kind": o.kind.value,
        "reason": o.reason,
        "who": o.who,
        "created_at": o.created_at,
        "expires_at": o.expires_at,
    }


def owned_from_json(item: object) -> OwnedEntry:
    d = _fields(item, {"server", "admin", "since", "reason"}, {"weight"})
    weight = d.get("weight")
    if weight is not None and (type(weight) is not int or weight < 0):
        raise InvalidEntry(f"'weight' is {weight!r}, not a non-negative integer")
    return OwnedEntry(
        server=_server(d),
        admin=_choice(d, "admin", AdminState),
        since=_number(d, "since"),
        reason=_text(d, "reason"),
        weight=weight,
    )


def owned_to_json(e: OwnedEntry) -> dict[str, Any]:
    return {
        "server": str(e.server),
        "admin": e.admin.value,
        "since": e.since,
        "reason": e.reason,
        "weight": e.weight,
    }


def check_blob_name(name: str) -> None:
    if not isinstance(name, str) or BLOB_NAME.fullmatch(name) is None:
        raise ValueError(f"blob name {name!r} must be of the form [a-z_]+")


def _fields(item: object, required: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise InvalidEntry(f"a {kind_of(item)}, not an object")
    missing = sorted(required - set(item))
    if missing:
        raise InvalidEntry(f"missing {missing}")
    unknown = sorted(set(item) - required - optional)
    if unknown:
        raise InvalidEntry(f"unknown keys {unknown}")
    return item


def _server(item: Mapping[str, Any]) -> ServerId:
    text = _text(item, "server")
    try:
        return ServerId.parse(text)
    except InvalidName as exc:
        raise InvalidEntry(str(exc)) from None


def _text(item: Mapping[str, Any], key: str) -> str:
    value = item[key]
    if not isinstance(value, str):
        raise InvalidEntry(f"{key!r} is a {kind_of(value)}, not a string")
    return value


def _number(item: Mapping[str, Any], key: str) -> float:
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidEntry(f"{key!r} is {value!r}, not a finite number")
    return float(value)


def _optional_number(item: Mapping[str, Any], key: str) -> float | None:
    return None if item.get(key) is None else _number(item, key)


_E = TypeVar("_E", OverrideKind, AdminState)


def _choice(item: Mapping[str, Any], key: str, enum: type[_E]) -> _E:
    value = _text(item, key)
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise InvalidEntry(f"{key!r} is {value!r}, not one of {allowed}") from None
