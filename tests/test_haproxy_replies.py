"""What HAProxy's `show servers state` and `show stat` answers read as, well-formed or not, and
what the reconciler does with a read that cannot be trusted.

The replies are HAProxy 2.6's own layout (header and column order copied from a live 2.6.12);
``ScriptedHAProxy`` answers them from a table the test controls, through the real driver code.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from lbhealthd.drivers.haproxy.driver import Endpoint, HAProxyDriver
from lbhealthd.drivers.haproxy.replies import pool_members
from lbhealthd.errors import Rejected
from lbhealthd.model import AdminState, Override, OverrideKind, ServerId
from tests.daemon_harness import Stepped, make_config

# `show servers state` columns, in HAProxy 2.6's order.
STATE_COLUMNS = [
    *("be_id", "be_name", "srv_id", "srv_name", "srv_addr", "srv_op_state", "srv_admin_state"),
    *("srv_uweight", "srv_iweight", "srv_time_since_last_change", "srv_check_status"),
    *("srv_check_result", "srv_check_health", "srv_check_state", "srv_agent_state"),
    *("bk_f_forced_id", "srv_f_forced_id", "srv_fqdn", "srv_port", "srvrecord", "srv_use_ssl"),
    *("srv_check_port", "srv_check_addr", "srv_agent_addr", "srv_agent_port"),
]
STAT_HEADER = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,status,weight,rate,check_status"


def state_row(name: str, **values: str) -> dict[str, str]:
    """One server's `show servers state` row, as HAProxy 2.6 prints a ready, up server."""
    row = dict.fromkeys(STATE_COLUMNS, "0")
    row.update(
        be_id="3",
        be_name="api",
        srv_id=name.lstrip("s") or "1",
        srv_name=name,
        srv_addr="127.0.0.1",
        srv_op_state="2",
        srv_uweight="100",
        srv_iweight="100",
        srv_check_status="1",
        srv_check_health="2",
        srv_fqdn="-",
        srv_port="19001",
        srvrecord="-",
        srv_check_addr="-",
        srv_agent_addr="-",
    )
    row.update(values)
    return row


def state_reply(rows: list[dict[str, str]], columns: list[str] | None = None) -> str:
    columns = columns if columns is not None else list(STATE_COLUMNS)
    lines = ["1", "# " + " ".join(columns)]
    lines += [" ".join(row[c] for c in columns if c in row) for row in rows]
    return "\n".join(lines) + "\n\n"


def stat_reply(names: list[str], **values: str) -> str:
    lines = [STAT_HEADER]
    for name in names:
        cells = {"qcur": "0", "scur": "0", "stot": "0", "rate": "0", **values}
        lines.append(
            f"api,{name},{cells['qcur']},0,{cells['scur']},0,,{cells['stot']},UP,100,"
            f"{cells['rate']},L7OK"
        )
    return "\n".join(lines) + "\n\n"


def read(state: str, stat: str | None = None) -> dict[str, Any]:
    members = pool_members("api", "unix:/x", state, stat or stat_reply(["s1", "s2"]))
    return {m.id.server: m for m in members}


def test_a_well_formed_reply_reads_as_the_states_it_shows() -> None:
    """The control of the tests below: drain (0x08), maint (0x01) and ready read as such."""
    members = read(
        state_reply(
            [
                state_row("s1", srv_admin_state="8"),
                state_row("s2", srv_admin_state="1"),
                state_row("s3"),
            ]
        ),
        stat_reply(["s1", "s2", "s3"], scur="4"),
    )
    assert {n: m.admin for n, m in members.items()} == {
        "s1": AdminState.DRAIN,
        "s2": AdminState.MAINT,
        "s3": AdminState.READY,
    }
    assert members["s1"].sessions == 4 and members["s1"].weight == 100


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("srv_admin_state", "abc"),
        ("srv_admin_state", "-8"),
        ("srv_admin_state", "0x08"),
        ("srv_op_state", "up"),
        ("srv_uweight", "1e2"),
        ("srv_iweight", "?"),
        ("srv_agent_state", "x"),
        ("srv_check_state", "1_0"),
        ("srv_port", "http"),
    ],
)
def test_a_non_numeric_state_column_makes_the_read_unreadable(column: str, value: str) -> None:
    """A state read from garbage would be taken for an operator's change: refused instead."""
    rows = [state_row("s1", srv_admin_state="8"), state_row("s2", **{column: value})]
    with pytest.raises(Rejected, match=column):
        read(state_reply(rows))


def test_a_row_with_missing_columns_makes_the_read_unreadable() -> None:
    """A short row (its last columns cut off) has no admin state to read."""
    row = state_row("s2")
    cut = " ".join(row[c] for c in STATE_COLUMNS[:6])
    reply = state_reply([state_row("s1")]).rstrip("\n") + "\n" + cut + "\n\n"
    with pytest.raises(Rejected, match="s2"):
        read(reply)


@pytest.mark.parametrize("missing", ["srv_admin_state", "srv_uweight", "srv_name"])
def test_a_header_without_a_column_lbhealthd_reads_is_unreadable(missing: str) -> None:
    columns = [c for c in STATE_COLUMNS if c != missing]
    with pytest.raises(Rejected, match=missing):
        read(state_reply([state_row("s1")], columns))


@pytest.mark.parametrize(("column", "value"), [("scur", "many"), ("stot", "-1"), ("qcur", "1.5")])
def test_a_non_numeric_counter_makes_the_read_unreadable(column: str, value: str) -> None:
    with pytest.raises(Rejected, match=column):
        read(
            state_reply([state_row("s1"), state_row("s2")]),
            stat_reply(["s1", "s2"], **{column: value}),
        )


def test_empty_counters_read_as_zero() -> None:
    """HAProxy leaves some cells empty; an empty counter is none, not garbage."""
    members = read(
        state_reply([state_row("s1"), state_row("s2")]), stat_reply(["s1", "s2"], rate="")
    )
    assert members["s1"].session_rate == 0


@pytest.mark.parametrize(
    ("bits", "admin", "imposed", "in_rotation"),
    [
        (0x00, AdminState.READY, None, True),
        (0x01, AdminState.MAINT, None, False),  # `set server ... state maint`
        (0x05, AdminState.MAINT, None, False),  # `disabled` in the config
        (0x04, AdminState.READY, None, True),  # `disabled`, then `state ready`: in rotation
        (0x08, AdminState.DRAIN, None, False),
        (0x02, AdminState.READY, AdminState.MAINT, False),  # tracks a server in maint
        (0x0A, AdminState.DRAIN, AdminState.MAINT, False),  # drained, tracks one in maint
        (0x10, AdminState.READY, AdminState.DRAIN, False),  # tracks a drained server
        (0x18, AdminState.DRAIN, AdminState.DRAIN, False),
        (0x20, AdminState.READY, AdminState.MAINT, False),  # its address does not resolve
        (0x40, AdminState.READY, None, True),  # FQDN set through the socket: no state
    ],
)
def test_admin_bits_split_what_an_admin_set_from_what_haproxy_imposes(
    bits: int, admin: AdminState, imposed: AdminState | None, in_rotation: bool
) -> None:
    """``admin`` is what `set server ... state` sets and reads back; a state inherited from a
    tracked server (`track`) or forced by a failed resolution is ``imposed``: no admin set it,
    and no admin command clears it. Both take a server out of rotation."""
    (member,) = read(state_reply([state_row("s1", srv_admin_state=str(bits))])).values()
    assert (member.admin, member.imposed, member.in_rotation) == (admin, imposed, in_rotation)


# --- through the driver and the reconciler ----------------------------------------------------

_BITS = {AdminState.READY: "0", AdminState.DRAIN: "8", AdminState.MAINT: "1"}


class ScriptedHAProxy(HAProxyDriver):
    """The real HAProxyDriver answered from a table instead of a socket: ``rows`` is each
    server's `show servers state` row, which ``set server`` commands change as HAProxy does;
    ``garble`` replaces cells of the next reads' rows (a corrupt answer)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(["unix:/nonexistent/scripted.sock"], timeout=1.0)
        self.rows = {n: state_row(n) for n in names}
        self.garble: dict[str, dict[str, str]] = {}
        self.garbled_reads = 0
        self.sets: list[str] = []

    async def command(self, endpoint: Endpoint, cmd: str) -> str:
        words = cmd.split()
        if cmd == "show info":
            return "Pid: 4242\nStart_time_sec: 1700000000\n\n"
        if cmd.startswith("show stat "):
            return stat_reply(list(self.rows))
        if cmd.startswith("show servers state "):
            if self.garbled_reads > 0:
                self.garbled_reads -= 1
                return state_reply([{**r, **self.garble.get(n, {})} for n, r in self.rows.items()])
            return state_reply(list(self.rows.values()))
        if words[:2] == ["set", "server"]:
            self.sets.append(cmd)
            name = words[2].split("/", 1)[1]
            if words[3] == "state":
                self.rows[name]["srv_admin_state"] = _BITS[AdminState(words[4])]
            else:
                self.rows[name]["srv_uweight"] = words[4]
            return "\n"
        raise AssertionError(f"unexpected command {cmd!r}")


Logs = list[MutableMapping[str, Any]]


@pytest.fixture
def logs() -> Iterator[Logs]:
    with capture_logs() as captured:
        yield captured


async def test_a_garbled_admin_state_does_not_end_an_operators_drain(
    tmp_path: Path, logs: Logs
) -> None:
    """An operator's 1-hour drain is applied; one read answers `srv_admin_state` with garbage:
    the pool is skipped that round (logged once), the override stays and no keep-in is added.
    When the LB then really shows the server ready (an operator's hand), the override ends and
    a keep-in is recorded, as it should."""
    driver = ScriptedHAProxy(["s1", "s2", "s3", "s4", "s5"])
    h = Stepped(make_config(["unix:/nonexistent/scripted.sock"], tmp_path / "state"), driver)
    store = h.store
    s1 = ServerId("api", "s1")
    wall = h.wall()
    store.put_override(Override(s1, OverrideKind.DRAIN, "disk swap", "oncall", wall, wall + 3600))
    rounds = h.tick

    await rounds(2)
    assert driver.rows["s1"]["srv_admin_state"] == "8"
    assert driver.sets == ["set server api/s1 state drain"]

    driver.garble = {"s1": {"srv_admin_state": "x"}}
    driver.garbled_reads = 3
    await rounds(3)
    assert [e["event"] for e in logs if e["event"] == "lb_unavailable"] == ["lb_unavailable"]
    assert "srv_admin_state" in next(e for e in logs if e["event"] == "lb_unavailable")["error"]
    await rounds(2)
    assert [e for e in logs if e["event"] == "lb_available"]
    assert not [e for e in logs if e["event"] == "operator_changed_state"]
    (kept,) = store.load_overrides().values()
    assert kept.kind is OverrideKind.DRAIN
    assert driver.sets == ["set server api/s1 state drain"]

    driver.rows["s1"]["srv_admin_state"] = "0"  # put back by hand, for real
    await rounds(1)
    assert [e["server"] for e in logs if e["event"] == "operator_changed_state"] == ["api/s1"]
    (keep,) = store.load_overrides().values()
    assert keep.kind is OverrideKind.READY
    await h.close()


def test_a_known_read_keeps_unchanged_members_and_builds_changed_ones() -> None:
    """With the previous read passed in, a row that reads the same is the same Member; a row
    with a changed cell (a state, a counter) is read afresh; a server gone is forgotten."""
    known: dict[str, Any] = {}
    rows = [state_row("s1"), state_row("s2"), state_row("s3")]
    first = pool_members("api", "unix:/x", state_reply(rows), stat_reply(["s1", "s2"]), known)
    rows[1] = state_row("s2", srv_admin_state="8")
    second = pool_members(
        "api", "unix:/x", state_reply(rows), stat_reply(["s1", "s2"], scur="4"), known
    )
    assert second[2] is first[2]  # s3: no stat row, nothing changed
    assert second[0] is not first[0] and second[0].sessions == 4
    assert second[1].admin is AdminState.DRAIN and first[1].admin is AdminState.READY
    stat = stat_reply(["s1", "s2"], scur="4")
    third = pool_members("api", "unix:/x", state_reply(rows[:2]), stat, known)
    assert [m.id.server for m in third] == ["s1", "s2"] and set(known) == {"s1", "s2"}
    assert third[1] is second[1]


def test_a_quoted_stat_row_is_read_with_its_quotes() -> None:
    """A `show stat` row with a quoted cell holding a comma reads the columns that follow it
    right (the quick split is only for rows without quotes)."""
    header = "# pxname,svname,check_desc,qcur,scur,stot,rate,check_status"
    stat = f'{header}\napi,s1,"Layer7, oddly",2,7,30,1,L7OK\napi,s2,plain,0,3,10,0,L4OK\n\n'
    members = read(state_reply([state_row("s1"), state_row("s2")]), stat)
    assert (members["s1"].queue, members["s1"].sessions, members["s1"].check_status) == (
        2,
        7,
        "L7OK",
    )
    assert (members["s2"].sessions, members["s2"].check_status) == (3, "L4OK")
