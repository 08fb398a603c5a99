"""Read what HAProxy's runtime API answers into lbhealthd's values.

- ``pool_members``: one endpoint's view of a pool, from its ``show servers state POOL`` table
  (names, addresses, admin and operational state, weights, agent and check flags) and its
  ``show stat POOL 4 -1`` CSV (sessions, queue, rates, check status).
- ``info_fields``: the ``show info`` reply as a dict.
- ``first_line``: the line of a reply quoted in errors.

A reply that does not have the expected shape is ``Rejected`` naming the endpoint: a header
without a column lbhealthd reads, a row cut short, a state, weight or counter that is not a
plain decimal number. Such a read is unreadable, never a state: read as 0, a garbled
``srv_admin_state`` would be "ready", and a server held out would look put back by hand. (An
empty counter in `show stat` is HAProxy's way of saying none, and reads as 0.) A server whose
name lbhealthd would refuse to send back is left out of the view (logged once).
"""

from __future__ import annotations

import csv
import operator
from collections.abc import Callable, Mapping

import structlog

from lbhealthd.errors import InvalidName, Rejected
from lbhealthd.model import AdminState, Member, OpState, ServerId

# srv_admin_state bits (HAProxy's SRV_ADMF_*) and srv_agent_state bits (CHK_ST_*). What an
# admin sets (FMAINT 0x01, FDRAIN 0x08; `disabled` sets FMAINT with CMAINT 0x04) is kept apart
# from what HAProxy imposes (IMAINT 0x02 and IDRAIN 0x10 inherited from a tracked server,
# RMAINT 0x20 while the address does not resolve): an inherited maint must not look like an
# operator's change of a state lbhealthd set. CMAINT alone is not maintenance (HAProxy's
# SRV_ADMF_MAINT mask leaves it out): it is what `disabled` leaves after `state ready`.
_SET_MAINT = 0x01
_SET_DRAIN = 0x08
_IMPOSED_MAINT = 0x02 | 0x20
_IMPOSED_DRAIN = 0x10
_IMPOSED = _IMPOSED_MAINT | _IMPOSED_DRAIN
_AGENT_ENABLED = 0x04
_CHECK_CONFIGURED = 0x02
_CHECK_ENABLED = 0x04
_OP_STATES = {0: OpState.DOWN, 1: OpState.STARTING, 2: OpState.UP, 3: OpState.STOPPING}


def first_line(reply: str) -> str:
    """The first line of a reply ("" when it is blank)."""
    return reply.strip().splitlines()[0] if reply.strip() else ""


def info_fields(endpoint: str, reply: str) -> dict[str, str]:
    """``show info`` as a dict (``Pid``, ``Uptime_sec``, ``Start_time_sec`` ...)."""
    info = {}
    for line in reply.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            info[key] = value.strip()
    if "Pid" not in info:
        raise Rejected(f"HAProxy answered {first_line(reply)!r}", endpoint=endpoint)
    return info


# The columns lbhealthd reads, in this order. HAProxy 2.6 sends 25 columns in `show servers
# state` and about 90 in `show stat`: keeping only these makes a 10,000-server read cost a
# tenth of the memory at its peak (the process keeps its high-water mark as RSS).
_STATE_COLUMNS = (
    "srv_name",
    "srv_addr",
    "srv_port",
    "srv_admin_state",
    "srv_op_state",
    "srv_uweight",
    "srv_iweight",
    "srv_agent_state",
    "srv_check_state",
)
_STAT_COLUMNS = ("scur", "qcur", "rate", "stot", "check_status")
_NO_STAT = ("",) * len(_STAT_COLUMNS)


def _picker(header: list[str], columns: tuple[str, ...]) -> Callable[[list[str]], tuple[str, ...]]:
    """A function taking ``columns`` (all in ``header``) out of a row laid out as ``header``;
    a cell a short row lacks is ""."""
    at = [header.index(c) for c in columns]
    fast = operator.itemgetter(*at)

    def pick(row: list[str]) -> tuple[str, ...]:
        try:
            return fast(row)  # type: ignore[no-any-return]
        except IndexError:  # a short row
            return tuple(row[i] if i < len(row) else "" for i in at)

    return pick


def _require(endpoint: str, what: str, header: list[str], columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in header]
    if missing:
        raise Rejected(
            f"HAProxy's {what} has no column {', '.join(missing)}: unreadable", endpoint=endpoint
        )


def check_state_reply(endpoint: str, reply: str) -> None:
    """Refuse a ``show servers state`` reply that is no table (an error such as an unknown
    backend), before anything else of the read is parsed: its words are the clearest."""
    head = reply.split("\n", 2)
    if len(head) < 2 or not head[1].startswith("# "):
        raise Rejected(f"HAProxy answered {first_line(reply)!r}", endpoint=endpoint)


def _table(
    endpoint: str, reply: str, header_at: int, columns: tuple[str, ...]
) -> list[tuple[str, ...]]:
    """``columns`` of each row of a ``# a b c`` header-led reply; ``header_at`` is the header's
    line index."""
    lines = reply.splitlines()
    if len(lines) <= header_at or not lines[header_at].startswith("# "):
        raise Rejected(f"HAProxy answered {first_line(reply)!r}", endpoint=endpoint)
    header = lines[header_at][2:].split()
    _require(endpoint, "show servers state", header, columns)
    pick = _picker(header, columns)
    return [pick(words) for ln in lines[header_at + 1 :] if (words := ln.split())]


#: ``show stat`` as read: the cells lbhealthd reads of each server, by server name.
StatRows = Mapping[str, tuple[str, ...]]


def stat_rows(endpoint: str, reply: str) -> dict[str, tuple[str, ...]]:
    """``show stat`` CSV rows by server name: the ``_STAT_COLUMNS`` of each."""
    if not reply.startswith("# "):
        raise Rejected(f"HAProxy answered {first_line(reply)!r}", endpoint=endpoint)
    lines = reply[2:].splitlines()
    header = next(csv.reader(lines[:1]), [])
    _require(endpoint, "show stat", header, ("svname", *_STAT_COLUMNS))
    name_at = header.index("svname")
    pick = _picker(header, _STAT_COLUMNS)
    # The columns read come before any free-text one, and names hold no comma: a row without
    # a quote is split only as far as the last column read (csv.reader for every row of a
    # 10,000-server pool cost more than the rest of the read).
    cut = max(name_at, *(header.index(c) for c in _STAT_COLUMNS)) + 1
    rows: dict[str, tuple[str, ...]] = {}
    for line in lines[1:]:
        if not line:
            continue
        row = line.split(",", cut) if '"' not in line else next(csv.reader([line]))
        rows[row[name_at] if name_at < len(row) else ""] = pick(row)
    return rows


def _garbage(
    endpoint: str, server: str, columns: tuple[str, ...], values: tuple[str, ...], empty_ok: bool
) -> Rejected:
    """The error for a row whose numeric ``columns`` are not all plain decimal numbers."""
    bad = next(
        (
            f"{c} {v[:40]!r}, not a number"
            for c, v in zip(columns, values, strict=True)
            if not (v.isascii() and v.isdigit()) and not (empty_ok and v == "")
        ),
        "a row cut short",
    )
    message = f"HAProxy's answer for {server[:80]!r} has {bad}: unreadable"
    return Rejected(message, endpoint=endpoint)


_STATE_NUMBERS = _STATE_COLUMNS[2:]
_STAT_NUMBERS = _STAT_COLUMNS[:4]


def _admin(bits: int) -> AdminState:
    if bits & _SET_MAINT:
        return AdminState.MAINT
    if bits & _SET_DRAIN:
        return AdminState.DRAIN
    return AdminState.READY


def _imposed(bits: int) -> AdminState | None:
    if bits & _IMPOSED_MAINT:
        return AdminState.MAINT
    if bits & _IMPOSED_DRAIN:
        return AdminState.DRAIN
    return None


def _checks(bits: int) -> bool | None:
    """HAProxy's own health checks: None when not configured, else whether they are enabled."""
    if not bits & _CHECK_CONFIGURED:
        return None
    return bool(bits & _CHECK_ENABLED)


_warned: set[str] = set()


def _warn_once(name: str, reason: str) -> None:
    if name not in _warned:
        _warned.add(name)
        structlog.get_logger().warning("server_name_unsupported", server=name[:200], reason=reason)


#: What a read of a pool found, by server name: the cells read and the Member built from them.
Known = dict[str, tuple[tuple[str, ...], Member]]


def pool_members(
    pool: str,
    endpoint: str,
    state_reply: str,
    stat_reply: str | StatRows,
    known: Known | None = None,
) -> list[Member]:
    """One endpoint's members of ``pool``, in ``show servers state`` order, from its replies to
    ``show servers state POOL`` and ``show stat POOL 4 -1`` (``endpoint`` names it in errors);
    the latter may be given as read already (``stat_rows``).

    ``known``, when given, is the previous read of the same endpoint and pool, and is replaced
    by this one: a server whose cells read the same is the same Member object as before (not
    checked nor built again), so a round where nothing changed costs little after the read and
    the reconciler can tell unchanged servers by identity.
    """
    state = _table(endpoint, state_reply, 1, _STATE_COLUMNS)
    stat = stat_rows(endpoint, stat_reply) if isinstance(stat_reply, str) else stat_reply
    before = known.copy() if known else {}
    if known is not None:
        known.clear()
    members = []
    for row in state:
        name = row[0]
        counters = stat.get(name, _NO_STAT)
        cells = row + counters
        hit = before.get(name)
        if hit is not None and hit[0] == cells:
            members.append(hit[1])
            if known is not None:
                known[name] = hit
            continue
        name, addr, port, admin, op, uweight, iweight, agent, check = row
        # One test of the row's numbers at once keeps 10,000-server reads cheap; a row cut
        # short has "" for its missing cells. (``int`` alone would take "+8", "1_0" and
        # non-ASCII digits.)
        digits = port + admin + op + uweight + iweight + agent + check
        if not (digits.isascii() and digits.isdigit()) or "" in row:
            raise _garbage(endpoint, name, _STATE_NUMBERS, row[2:], empty_ok=False)
        try:
            sid = ServerId(pool, name)
        except InvalidName as exc:
            # HAProxy accepts some names lbhealthd will not send back (over 64 characters):
            # such a server is left alone, never driven.
            _warn_once(f"{pool}/{name}", str(exc))
            continue
        scur, qcur, rate, stot, check_status = counters
        digits = scur + qcur + rate + stot
        if digits and not (digits.isascii() and digits.isdigit()):
            raise _garbage(endpoint, name, _STAT_NUMBERS, counters[:4], empty_ok=True)
        bits = int(admin)
        member = Member(
            id=sid,
            address=addr,
            port=int(port),
            admin=_admin(bits),
            op=_OP_STATES.get(int(op), OpState.DOWN),
            weight=int(uweight),
            initial_weight=int(iweight),
            sessions=int(scur) if scur else 0,
            queue=int(qcur) if qcur else 0,
            session_rate=int(rate) if rate else 0,
            sessions_total=int(stot) if stot else 0,
            check_status=check_status.removeprefix("* "),
            has_agent=bool(int(agent) & _AGENT_ENABLED),
            checks_enabled=_checks(int(check)),
            imposed=_imposed(bits) if bits & _IMPOSED else None,
        )
        members.append(member)
        if known is not None:
            known[name] = (cells, member)
    return members
