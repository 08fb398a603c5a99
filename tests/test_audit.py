"""The config audit: live members and HAProxy config files against the expected pool."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import pytest

from lbhealthd.drivers.haproxy import config_file as haproxy_cfg
from lbhealthd.drivers.haproxy.config_file import (
    CfgServer,
    audit_cfg,
    haproxy_messages,
    parse_backends,
    syntax_check,
)
from lbhealthd.drivers.haproxy.driver import HAProxyDriver, parse_socket
from lbhealthd.drivers.haproxy.process import HAProxyProcess, ServerSpec, find_haproxy, free_port
from lbhealthd.model import AdminState, Member, OpState, ServerId
from lbhealthd.monitors.audit import (
    Expectation,
    Finding,
    FindingKind,
    audit_pair,
    audit_pool,
    expectation_from,
)
from tests.fixtures_haproxy import ApiServers, HAProxyFactory, HAProxyHandle, api_backend

K = FindingKind
READY, DRAIN, MAINT = AdminState.READY, AdminState.DRAIN, AdminState.MAINT


def sid(server: str, pool: str = "api") -> ServerId:
    return ServerId(pool, server)


def member(
    server: str,
    weight: int = 100,
    initial: int | None = None,
    admin: AdminState = READY,
    *,
    consistent: bool = True,
    pool: str = "api",
) -> Member:
    return Member(
        id=sid(server, pool),
        address="127.0.0.1",
        port=8000,
        admin=admin,
        op=OpState.UP,
        weight=weight,
        initial_weight=weight if initial is None else initial,
        consistent=consistent,
    )


def pool_of(*weights: int) -> list[Member]:
    return [member(f"s{i + 1}", w) for i, w in enumerate(weights)]


def summary(findings: Sequence[Finding]) -> list[tuple[str | None, FindingKind, str]]:
    return [(f.server, f.kind, f.actual) for f in findings]


DEFAULT_100 = expectation_from("api", None, {"default": 100})
FIVE = frozenset({"s1", "s2", "s3", "s4", "s5"})

# --- audit_pool -------------------------------------------------------------------------------

POOL_CASES = [
    pytest.param(pool_of(100, 100, 100, 100, 100), DEFAULT_100, (), None, [], id="all-as-expected"),
    pytest.param(
        pool_of(100, 100, 1, 1, 1),
        DEFAULT_100,
        (),
        None,
        [("s3", K.WEIGHT, "1"), ("s4", K.WEIGHT, "1"), ("s5", K.WEIGHT, "1")],
        id="postmortem-weights",
    ),
    pytest.param(
        pool_of(100, 100, 1, 1, 1),
        expectation_from("api", None, {"default": 100, "s3": 1, "s4": 1, "s5": 1}),
        (),
        None,
        [],
        id="per-server-weight-wins-over-default",
    ),
    pytest.param(
        pool_of(100, 100, 1, 1, 1),
        expectation_from("api", None, {}),
        (),
        None,
        [],
        id="no-expected-weight-no-weight-check",
    ),
    pytest.param(
        pool_of(100, 100, 1),
        expectation_from("api", None, {"s3": 100}),
        (),
        None,
        [("s3", K.WEIGHT, "1")],
        id="only-named-server-checked",
    ),
    pytest.param(
        [member("s1"), member("s2", 5, initial=100)],
        DEFAULT_100,
        (),
        None,
        [("s2", K.WEIGHT, "5 (configured 100)")],
        id="weight-changed-by-hand",
    ),
    pytest.param(
        [member("s1"), member("s2", 5, initial=100)],
        DEFAULT_100,
        (sid("s2"),),
        None,
        [],
        id="owned-server-may-ramp",
    ),
    pytest.param(
        [member("s1"), member("s2", 50, initial=1)],
        DEFAULT_100,
        (sid("s2"),),
        None,
        [("s2", K.WEIGHT, "configured 1 (now 50)")],
        id="owned-server-configured-weight-still-checked",
    ),
    pytest.param(
        [member("s1"), member("s2", 100, initial=1)],
        DEFAULT_100,
        (),
        None,
        [("s2", K.WEIGHT, "configured 1 (now 100)")],
        id="configured-weight-wrong-current-right",
    ),
    pytest.param(
        pool_of(100, 100),
        Expectation("api", frozenset({"s1", "s2", "s3"})),
        (),
        None,
        [("s3", K.MISSING_SERVER, "absent")],
        id="missing-server",
    ),
    pytest.param(
        pool_of(100, 100, 100),
        Expectation("api", frozenset({"s1", "s2"})),
        (),
        None,
        [("s3", K.UNEXPECTED_SERVER, "present")],
        id="unexpected-server",
    ),
    pytest.param(
        pool_of(100, 100, 100), Expectation("api", None), (), None, [], id="any-server-set"
    ),
    pytest.param(
        [member("s1"), member("s2", admin=DRAIN), member("s3", admin=MAINT)],
        DEFAULT_100,
        (),
        None,
        [("s2", K.ADMIN_STATE, "drain"), ("s3", K.ADMIN_STATE, "maint")],
        id="admin-state-left-by-hand",
    ),
    pytest.param(
        [member("s1"), member("s2", admin=DRAIN), member("s3", admin=MAINT)],
        DEFAULT_100,
        (sid("s2"), sid("s3")),
        None,
        [],
        id="admin-state-owned",
    ),
    pytest.param(
        [member("s1"), member("s2", consistent=False)],
        DEFAULT_100,
        (sid("s2"),),
        None,
        [("s2", K.ENDPOINTS_DISAGREE, "differs")],
        id="endpoints-disagree-even-if-owned",
    ),
    pytest.param(
        pool_of(100, 100, 100),
        DEFAULT_100,
        (),
        {sid("s1"): True, sid("s2"): False},
        [("s2", K.CHECKS_DISABLED, "off")],
        id="checks-off",
    ),
    pytest.param(
        [member("s1", 1, admin=MAINT, consistent=False)],
        Expectation("api", frozenset({"s1", "s0"}), default_weight=100),
        (),
        {sid("s1"): False},
        [
            ("s0", K.MISSING_SERVER, "absent"),
            ("s1", K.WEIGHT, "1"),
            ("s1", K.ADMIN_STATE, "maint"),
            ("s1", K.CHECKS_DISABLED, "off"),
            ("s1", K.ENDPOINTS_DISAGREE, "differs"),
        ],
        id="everything-wrong-in-kind-order",
    ),
]


@pytest.mark.parametrize(("members", "expectation", "owned", "checks", "expected"), POOL_CASES)
def test_audit_pool(
    members: list[Member],
    expectation: Expectation,
    owned: Collection[ServerId],
    checks: Mapping[ServerId, bool] | None,
    expected: list[tuple[str | None, FindingKind, str]],
) -> None:
    """Each kind of drift gives its finding, and nothing else does."""
    findings = audit_pool(members, expectation, owned, checks=checks)
    assert summary(findings) == expected
    assert all(f.pool == "api" and "\n" not in f.message for f in findings)


def test_audit_pool_messages() -> None:
    """Messages are one line naming the server, what it is and what was expected."""
    members = [member("s1", 5, initial=100), member("s3", 1), member("s4", admin=MAINT)]
    findings = audit_pool(
        members, Expectation("api", frozenset({"s1", "s2", "s3", "s4"}), {}, 100), ()
    )
    assert [f.message for f in findings] == [
        "api/s1: weight 5 (configured 100), expected 100",
        "api/s2: missing from the load balancer, expected present",
        "api/s3: weight 1, expected 100",
        "api/s4: admin state maint, expected ready (not set by lbhealthd)",
    ]
    assert str(findings[2]) == "api/s3: weight 1, expected 100"
    assert (findings[2].expected, findings[2].actual) == ("100", "1")


def test_audit_pool_order_is_natural_and_independent_of_input() -> None:
    """Findings are sorted by server in natural order (s2 before s10), whatever the input order."""
    members = [member(f"s{i}", 1) for i in (10, 2, 1, 11)]
    forward = audit_pool(members, DEFAULT_100, ())
    backward = audit_pool(list(reversed(members)), DEFAULT_100, ())
    assert [f.server for f in forward] == ["s1", "s2", "s10", "s11"]
    assert forward == backward


def test_audit_pool_refuses_members_of_another_pool() -> None:
    """A member of another pool is a caller's mistake, not a finding."""
    with pytest.raises(ValueError, match="web/s1"):
        audit_pool([member("s1", pool="web")], DEFAULT_100, ())


def test_expectation_from_splits_default() -> None:
    """The ``default`` key becomes the default weight; the others are per-server weights."""
    exp = expectation_from("api", ["s1", "s2"], {"default": 100, "s2": 50})
    assert exp.servers == frozenset({"s1", "s2"})
    assert dict(exp.weights) == {"s2": 50}
    assert exp.default_weight == 100
    assert (exp.weight_of("s1"), exp.weight_of("s2")) == (100, 50)
    assert expectation_from("api", None, {}).weight_of("s1") is None


@pytest.mark.parametrize(
    "weights",
    [{"default": 257}, {"s1": -1}, {"s1": True}],
    ids=["default-too-big", "negative", "bool"],
)
def test_expectation_refuses_bad_weights(weights: dict[str, int]) -> None:
    """Expected weights outside HAProxy's 0..256 are refused."""
    with pytest.raises(ValueError, match=r"0\.\.256"):
        expectation_from("api", None, weights)


def test_values_are_frozen() -> None:
    """Findings and expectations cannot be changed after the fact."""
    finding = audit_pool(pool_of(1), DEFAULT_100, ())[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        finding.actual = "100"  # type: ignore[misc]
    assert not hasattr(finding, "__dict__")
    exp = expectation_from("api", None, {"s1": 1})
    with pytest.raises(TypeError):
        exp.weights["s1"] = 2  # type: ignore[index]


# --- audit_pair -------------------------------------------------------------------------------

PAIR_CASES = [
    pytest.param({"a": pool_of(100, 100), "b": pool_of(100, 100)}, [], id="agree"),
    pytest.param({"a": pool_of(100, 100)}, [], id="single-endpoint"),
    pytest.param({}, [], id="no-endpoint"),
    pytest.param(
        {"a": pool_of(100, 100), "b": [member("s1"), member("s2", admin=DRAIN)]},
        ["api/s2: admin state differs between endpoints: a=ready, b=drain"],
        id="admin-state",
    ),
    pytest.param(
        {"a": pool_of(100, 100), "b": pool_of(100, 5)},
        ["api/s2: weight differs between endpoints: a=100, b=5"],
        id="weight",
    ),
    pytest.param(
        {"a": pool_of(100, 100), "b": [member("s1"), member("s2", 0, admin=MAINT)]},
        [
            "api/s2: admin state differs between endpoints: a=ready, b=maint",
            "api/s2: weight differs between endpoints: a=100, b=0",
        ],
        id="admin-state-and-weight",
    ),
    pytest.param(
        {"a": pool_of(100, 100, 100), "b": pool_of(100, 100)},
        ["api/s3: present on a only, absent from b"],
        id="present-on-one-only",
    ),
    pytest.param(
        {"a": pool_of(100), "b": pool_of(100), "c": [member("s1", admin=DRAIN)]},
        ["api/s1: admin state differs between endpoints: a=ready, b=ready, c=drain"],
        id="three-endpoints",
    ),
    pytest.param(
        {"a": [member("s1", pool="web")], "b": [member("s1", pool="api")]},
        ["api/s1: present on b only, absent from a", "web/s1: present on a only, absent from b"],
        id="pools-apart",
    ),
]


@pytest.mark.parametrize(("views", "messages"), PAIR_CASES)
def test_audit_pair(views: Mapping[str, Sequence[Member]], messages: list[str]) -> None:
    """Every server whose admin state or weight differs, or that one endpoint lacks, is named
    with the value on each endpoint."""
    findings = audit_pair(views)
    assert [f.message for f in findings] == messages
    assert all(f.kind is K.ENDPOINTS_DISAGREE for f in findings)


def test_audit_pair_values() -> None:
    """``expected`` holds the first endpoint's value, ``actual`` the others'."""
    [finding] = audit_pair({"a": pool_of(100, 100), "b": [member("s1"), member("s2", admin=DRAIN)]})
    assert (finding.pool, finding.server) == ("api", "s2")
    assert (finding.expected, finding.actual) == ("a=ready", "b=drain")


# --- parse_backends ---------------------------------------------------------------------------

DEFAULTS_CFG = """\
global
    maxconn 100
defaults
    mode http
    default-server weight 7 check
frontend fe
    bind 127.0.0.1:8080
    default_backend api
    server nope 127.0.0.1:1 weight 9
backend api
    server s1 127.0.0.1:1
    server s2 127.0.0.1:2 weight 3 no-check
"""

PARSE_CASES = [
    pytest.param(
        "backend api\n    server s1 10.0.0.1:80\n    server s2 10.0.0.2:80 weight 100 check\n",
        {
            "api": [
                ("s1", "10.0.0.1:80", 1, False, False, 2),
                ("s2", "10.0.0.2:80", 100, True, False, 3),
            ]
        },
        id="weight-defaults-to-1",
    ),
    pytest.param(
        "backend api\n  server s1 a:1 weight 5\n  default-server weight 50 disabled check\n"
        "  server s2 a:2\n  server s3 a:3 enabled weight 4 no-check\n",
        {
            "api": [
                ("s1", "a:1", 5, False, False, 2),
                ("s2", "a:2", 50, True, True, 4),
                ("s3", "a:3", 4, False, False, 5),
            ]
        },
        id="default-server-applies-to-servers-after-it",
    ),
    pytest.param(
        DEFAULTS_CFG,
        {
            "api": [
                ("s1", "127.0.0.1:1", 7, True, False, 11),
                ("s2", "127.0.0.1:2", 3, False, False, 12),
            ]
        },
        id="default-server-from-defaults-frontend-ignored",
    ),
    pytest.param(
        "defaults base\n  default-server weight 9\ndefaults\n  mode http\n"
        "backend a\n  server s1 x:1\nbackend b from base\n  server s1 x:1\n",
        {"a": [("s1", "x:1", 1, False, False, 6)], "b": [("s1", "x:1", 9, False, False, 8)]},
        id="defaults-reset-and-from",
    ),
    pytest.param(
        "defaults base\n  default-server weight 9\n"
        "defaults second from base\n  default-server check\n"
        "backend a\n  server s1 x:1\n",
        {"a": [("s1", "x:1", 9, True, False, 6)]},
        id="defaults-from-defaults",
    ),
    pytest.param(
        "listen api\n    bind :80\n    server s1 x:1 weight 2\nbackend other\n",
        {"api": [("s1", "x:1", 2, False, False, 3)], "other": []},
        id="listen-and-empty-backend",
    ),
    pytest.param(
        "# header\n\nbackend api # the pool\n    # server s0 x:0 weight 9\n"
        "    server s1 x:1 weight 2 # weight 9\n    server s2 x:2 weight 3#4\n",
        {"api": [("s1", "x:1", 2, False, False, 5), ("s2", "x:2", 3, False, False, 6)]},
        id="comments-and-blank-lines",
    ),
    pytest.param(
        'backend api\n    server s1 "x:1" weight "2"   check\n'
        "    server s2 x:2 weight '3' agent-send \"a b#c\\n\"\n",
        {"api": [("s1", "x:1", 2, True, False, 2), ("s2", "x:2", 3, False, False, 3)]},
        id="quotes",
    ),
    pytest.param(
        "backend api\n    cookie SRV insert\n    server s1 x:1 cookie check weight 4\n"
        "    server s2 x:2 track api/s1 inter 2s rise 2 fall 3\n",
        {"api": [("s1", "x:1", 4, False, False, 3), ("s2", "x:2", 1, False, False, 4)]},
        id="keyword-arguments-are-not-keywords",
    ),
    pytest.param(
        "backend api\n    server s1 x:1 weight 12abc\n    server s2 x:2 weight abc\n",
        {"api": [("s1", "x:1", 12, False, False, 2), ("s2", "x:2", 0, False, False, 3)]},
        id="weight-read-like-atol",
    ),
    pytest.param(
        "backend api\n\tserver\ts1\t[::1]:80\tweight\t2\n    server s2 unix@/run/s.sock\n",
        {
            "api": [
                ("s1", "[::1]:80", 2, False, False, 2),
                ("s2", "unix@/run/s.sock", 1, False, False, 3),
            ]
        },
        id="tabs-ipv6-unix",
    ),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse_backends(text: str, expected: dict[str, list[tuple[object, ...]]]) -> None:
    """Servers come out with the weight and flags HAProxy would give them, and their line."""
    parsed = parse_backends(text)
    assert {
        name: [dataclasses.astuple(s) for s in servers] for name, servers in parsed.items()
    } == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("backend api\n    server s1\n", "line 2: 'server' expects"),
        ("backend api\nbackend api\n", "line 2: backend 'api' is already defined at line 1"),
        ("backend api\n  server s1 x:1\n  server s1 x:2\n", "line 3: another server named 's1'"),
        ('backend api\n  server s1 "x:1\n', "line 2: unterminated quote"),
        ("backend api\n  server s1 x:1 weight 300\n", "line 2: weight 300"),
        ("backend api\n  server s1 x:1 weight\n", "line 2: 'weight' expects"),
        ("backend api from nowhere\n", "line 1: defaults section 'nowhere'"),
        ("backend\n", "line 1: 'backend' expects a name"),
    ],
    ids=[
        "no-address",
        "duplicate-backend",
        "duplicate-server",
        "quote",
        "weight-range",
        "weight-missing",
        "unknown-defaults",
        "no-name",
    ],
)
def test_parse_backends_refuses(text: str, match: str) -> None:
    """What HAProxy would refuse outright raises ValueError naming the line."""
    with pytest.raises(ValueError, match=match):
        parse_backends(text)


# --- audit_cfg --------------------------------------------------------------------------------


def cfg(
    *servers: tuple[str, int], check: bool = True, disabled: str = ""
) -> dict[str, list[CfgServer]]:
    return {
        "api": [
            CfgServer(name, f"10.0.0.{i}:80", weight, check, name == disabled, 10 + i)
            for i, (name, weight) in enumerate(servers)
        ]
    }


POSTMORTEM = cfg(("s1", 100), ("s2", 100), ("s3", 1), ("s4", 1), ("s5", 1))

CFG_CASES = [
    pytest.param(
        POSTMORTEM,
        DEFAULT_100,
        False,
        [
            "api/s3: weight 1 in haproxy.cfg line 12, expected 100",
            "api/s4: weight 1 in haproxy.cfg line 13, expected 100",
            "api/s5: weight 1 in haproxy.cfg line 14, expected 100",
        ],
        id="postmortem",
    ),
    pytest.param(
        {"web": []}, DEFAULT_100, False, ["backend api not found in haproxy.cfg"], id="no-backend"
    ),
    pytest.param(
        cfg(("s1", 100), ("s9", 100)),
        Expectation("api", frozenset({"s1", "s2"})),
        False,
        [
            "api/s2: not in backend api of haproxy.cfg, expected present",
            "api/s9: in haproxy.cfg line 11, not expected",
        ],
        id="missing-and-unexpected",
    ),
    pytest.param(
        cfg(("s1", 100), ("s2", 100), disabled="s2"),
        DEFAULT_100,
        False,
        ["api/s2: disabled in haproxy.cfg line 11 (starts in maint), expected ready"],
        id="disabled",
    ),
    pytest.param(cfg(("s1", 100), check=False), DEFAULT_100, False, [], id="checks-not-required"),
    pytest.param(
        cfg(("s1", 100), check=False),
        DEFAULT_100,
        True,
        ["api/s1: no 'check' in haproxy.cfg line 10, expected health checks on"],
        id="checks-required",
    ),
]


@pytest.mark.parametrize(("backends", "expectation", "require_checks", "messages"), CFG_CASES)
def test_audit_cfg(
    backends: dict[str, list[CfgServer]],
    expectation: Expectation,
    require_checks: bool,
    messages: list[str],
) -> None:
    """A config file's drift gives the live audit's finding kinds, each naming its line."""
    findings = audit_cfg(backends, expectation, require_checks=require_checks)
    assert [f.message for f in findings] == messages


def test_audit_cfg_kinds() -> None:
    """A missing backend is a pool-wide missing_server; weights are weight findings."""
    [missing] = audit_cfg({}, DEFAULT_100, source="/etc/haproxy/haproxy.cfg")
    assert (missing.kind, missing.server, missing.pool) == (K.MISSING_SERVER, None, "api")
    assert missing.message == "backend api not found in /etc/haproxy/haproxy.cfg"
    weights = audit_cfg(POSTMORTEM, DEFAULT_100)
    assert summary(weights) == [("s3", K.WEIGHT, "1"), ("s4", K.WEIGHT, "1"), ("s5", K.WEIGHT, "1")]


# --- syntax_check output and errors -----------------------------------------------------------

HAPROXY_OUTPUT = """\
[NOTICE]   (21584) : haproxy version is 2.6.12-1+deb12u4
[NOTICE]   (21584) : path to executable is /usr/sbin/haproxy
[WARNING]  (21584) : config : missing timeouts for backend 'api'.
   | While not properly invalid, you will certainly encounter various problems
   | with such a configuration.
[ALERT]    (21582) : config : parsing [bad.cfg:12] : unknown keyword 'bogus' in 'backend' section
"""


def test_haproxy_messages_keeps_alerts_and_warnings() -> None:
    """NOTICE lines and process ids go; a warning's continuation lines join it."""
    assert haproxy_messages(HAPROXY_OUTPUT).splitlines() == [
        "[WARNING] config : missing timeouts for backend 'api'. While not properly invalid, "
        "you will certainly encounter various problems with such a configuration.",
        "[ALERT] config : parsing [bad.cfg:12] : unknown keyword 'bogus' in 'backend' section",
    ]
    assert haproxy_messages("Configuration file is valid\n") == "Configuration file is valid"


def test_syntax_check_without_haproxy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No haproxy binary is a clear error, not a failed check."""
    monkeypatch.setattr(haproxy_cfg, "find_haproxy", lambda: None)
    with pytest.raises(FileNotFoundError, match="haproxy binary not found"):
        syntax_check(tmp_path / "haproxy.cfg")


# --- against a real HAProxy -------------------------------------------------------------------


def require_haproxy() -> str:
    binary = find_haproxy()
    if binary is None:
        pytest.skip("haproxy binary not found in PATH or /usr/sbin; install the haproxy package")
    return binary


MINIMAL_CFG = """\
global
    maxconn 100
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend fe
    bind 127.0.0.1:{port}
    default_backend api
backend api
    balance roundrobin
    server s1 127.0.0.1:{port1} weight 100 check
    server s2 127.0.0.1:{port2} weight 100
"""


def postmortem_backend(api_servers: ApiServers) -> list[ServerSpec]:
    return [
        dataclasses.replace(spec, weight=w)
        for spec, w in zip(api_backend(api_servers), (100, 100, 1, 1, 1), strict=True)
    ]


async def snapshot(socket: str) -> list[Member]:
    driver = HAProxyDriver([socket], 2.0)
    try:
        return list((await driver.snapshot("api")).members)
    finally:
        await driver.close()


@pytest.mark.integration
async def test_live_postmortem_weights(
    api_servers: ApiServers, haproxy_factory: HAProxyFactory
) -> None:
    """HAProxy with weights 100,100,1,1,1 audited against default 100 reports s3, s4, s5."""
    lb = await haproxy_factory({"api": postmortem_backend(api_servers)})
    findings = audit_pool(await snapshot(lb.socket), DEFAULT_100, ())
    assert [f.message for f in findings] == [
        "api/s3: weight 1, expected 100",
        "api/s4: weight 1, expected 100",
        "api/s5: weight 1, expected 100",
    ]
    assert summary(findings) == [
        ("s3", K.WEIGHT, "1"),
        ("s4", K.WEIGHT, "1"),
        ("s5", K.WEIGHT, "1"),
    ]


@pytest.mark.integration
async def test_live_pool_as_expected(haproxy: HAProxyHandle) -> None:
    """A pool that is as expected (five servers, weight 100) gives no finding."""
    members = await snapshot(haproxy.socket)
    assert audit_pool(members, expectation_from("api", FIVE, {"default": 100}), ()) == []
    missing = audit_pool(members, expectation_from("api", FIVE | {"s6"}, {}), ())
    assert summary(missing) == [("s6", K.MISSING_SERVER, "absent")]


@pytest.mark.integration
async def test_live_changes_by_hand(haproxy: HAProxyHandle) -> None:
    """A server put in maint or reweighted by hand is reported, unless lbhealthd owns it."""
    driver = HAProxyDriver([haproxy.socket], 2.0)
    await driver.set_state(sid("s2"), MAINT)
    await driver.set_weight(sid("s4"), 5)
    members = await snapshot(haproxy.socket)
    assert {m.id.server: m.admin for m in members}["s2"] is MAINT

    findings = audit_pool(members, DEFAULT_100, ())
    assert [f.message for f in findings] == [
        "api/s2: admin state maint, expected ready (not set by lbhealthd)",
        "api/s4: weight 5 (configured 100), expected 100",
    ]
    assert audit_pool(members, DEFAULT_100, (sid("s2"), sid("s4"))) == []


@pytest.mark.integration
async def test_live_pair_disagrees(
    api_servers: ApiServers, haproxy_factory: HAProxyFactory
) -> None:
    """Two HAProxy processes where one has s2 drained: the pair audit names s2 with both states,
    and the merged snapshot marks it as disagreeing."""
    backends = {"api": api_backend(api_servers)}
    a, b = await haproxy_factory(backends), await haproxy_factory(backends)
    await HAProxyDriver([b.socket], 2.0).set_state(sid("s2"), DRAIN)

    findings = audit_pair({a.socket: await snapshot(a.socket), b.socket: await snapshot(b.socket)})
    assert [(f.server, f.kind) for f in findings] == [("s2", K.ENDPOINTS_DISAGREE)]
    assert findings[0].message == (
        f"api/s2: admin state differs between endpoints: {a.socket}=ready, {b.socket}=drain"
    )

    merged = await HAProxyDriver([a.socket, b.socket], 2.0).snapshot("api")
    assert summary(audit_pool(merged.members, DEFAULT_100, (sid("s2"),))) == [
        ("s2", K.ENDPOINTS_DISAGREE, "differs")
    ]


@pytest.mark.integration
def test_syntax_check_accepts_valid_config(tmp_path: Path) -> None:
    """A valid minimal config on loopback passes ``haproxy -c``."""
    binary = require_haproxy()
    path = tmp_path / "ok.cfg"
    path.write_text(MINIMAL_CFG.format(port=free_port(), port1=free_port(), port2=free_port()))
    ok, message = syntax_check(path, binary)
    assert ok, message
    assert "ALERT" not in message


@pytest.mark.integration
def test_syntax_check_refuses_unknown_keyword(tmp_path: Path) -> None:
    """A ``bogus-keyword`` line fails the check, quoting HAProxy's ALERT with the line."""
    binary = require_haproxy()
    lines = MINIMAL_CFG.format(port=free_port(), port1=free_port(), port2=free_port()).splitlines()
    lines.insert(12, "    bogus-keyword on")
    path = tmp_path / "bad.cfg"
    path.write_text("\n".join(lines) + "\n")
    ok, message = syntax_check(path, binary)
    assert not ok
    assert "[ALERT]" in message
    assert f"parsing [{path}:13] : unknown keyword 'bogus-keyword' in 'backend' section" in message
    assert "NOTICE" not in message


@pytest.mark.integration
def test_syntax_check_missing_file(tmp_path: Path) -> None:
    """A file that does not exist fails the check with the reason."""
    ok, message = syntax_check(tmp_path / "nosuch.cfg", require_haproxy())
    assert not ok
    assert message == f"cannot read {tmp_path / 'nosuch.cfg'}: No such file or directory"


@pytest.mark.integration
async def test_config_file_of_live_lb(
    api_servers: ApiServers, haproxy_factory: HAProxyFactory
) -> None:
    """The running HAProxy's own file passes the check without disturbing it; parsing and
    auditing it gives the three weight findings with their lines, and the weights HAProxy
    loaded are the parsed ones."""
    lb = await haproxy_factory({"api": postmortem_backend(api_servers)})
    driver = HAProxyDriver([lb.socket], 2.0)
    epoch = await driver.epoch(parse_socket(lb.socket))

    ok, message = syntax_check(lb.proc.config_path)
    assert ok, message
    assert await driver.epoch(parse_socket(lb.socket)) == epoch

    text = lb.proc.config_path.read_text()
    lines = text.splitlines()
    line_of = {
        n: 1 + next(i for i, ln in enumerate(lines) if f"server {n} " in ln)
        for n in ("s3", "s4", "s5")
    }
    backends = parse_backends(text)
    findings = audit_cfg(backends, DEFAULT_100, source=lb.proc.config_path.name)
    assert [f.message for f in findings] == [
        f"api/{n}: weight 1 in haproxy.cfg line {line_of[n]}, expected 100"
        for n in ("s3", "s4", "s5")
    ]
    live = {m.id.server: m.initial_weight for m in await snapshot(lb.socket)}
    assert {s.name: s.weight for s in backends["api"]} == live


class RawConfig(HAProxyProcess):
    """An HAProxy child that runs a config text given as is (with the admin socket filled in)."""

    def __init__(self, workdir: Path, text: str, binary: str) -> None:
        super().__init__(workdir, {"api": []}, binary=binary)
        self.text = text

    def config_text(self) -> str:
        return self.text.format(sock=self.socket_path, port=self.frontend_port)


PARSER_VS_HAPROXY = """\
global
    stats socket {sock} mode 600 level admin
defaults base
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    default-server weight 9 check inter 5s
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    default-server weight 7   # every proxy below starts from here
frontend fe
    bind 127.0.0.1:{port}
    default_backend api
backend api
    server s1 127.0.0.1:PORT1
    server s2 127.0.0.1:PORT2 weight 3 check inter 5s
    default-server weight 50 disabled
    server s3 127.0.0.1:PORT3
    server s4 127.0.0.1:PORT4 enabled cookie check
    server s5 "127.0.0.1:PORT5" weight 12abc
backend other from base
    server t1 127.0.0.1:PORT1 no-check
    server t2 127.0.0.1:PORT2 weight 2
"""


def check_configured(reply: str) -> dict[str, bool]:
    """Whether each server has health checks configured (``srv_check_state`` bit 0x02)."""
    lines = reply.splitlines()
    header = lines[1][2:].split()
    rows = [dict(zip(header, ln.split(), strict=False)) for ln in lines[2:] if ln.strip()]
    return {r["srv_name"]: bool(int(r["srv_check_state"]) & 0x02) for r in rows}


@pytest.mark.integration
async def test_parser_agrees_with_haproxy(tmp_path: Path, api_servers: ApiServers) -> None:
    """Weights, ``disabled`` and ``check`` as parsed are what HAProxy loads from the same file,
    through defaults sections, ``from``, ``default-server`` and their overrides."""
    binary = require_haproxy()
    text = PARSER_VS_HAPROXY
    for i, port in enumerate(api_servers.ports, start=1):
        text = text.replace(f"PORT{i}", str(port))
    async with RawConfig(tmp_path / "raw", text, binary) as proc:
        parsed = parse_backends(proc.config_path.read_text())
        driver = HAProxyDriver([proc.socket], 2.0)
        endpoint = parse_socket(proc.socket)
        for pool in ("api", "other"):
            members = (await driver.snapshot(pool)).members
            live = {m.id.server: (m.initial_weight, m.admin is MAINT) for m in members}
            assert {s.name: (s.weight, s.disabled) for s in parsed[pool]} == live
            checks = check_configured(await driver.command(endpoint, f"show servers state {pool}"))
            assert {s.name: s.check for s in parsed[pool]} == checks
    assert [(s.name, s.weight, s.check, s.disabled) for s in parsed["api"]] == [
        ("s1", 7, False, False),
        ("s2", 3, True, False),
        ("s3", 50, False, True),
        ("s4", 50, False, False),
        ("s5", 12, False, True),
    ]
    assert [(s.name, s.weight, s.check) for s in parsed["other"]] == [
        ("t1", 9, False),
        ("t2", 2, True),
    ]


@pytest.mark.integration
async def test_fix_never_moves_a_weight_to_or_from_zero(
    haproxy: HAProxyHandle, tmp_path: Path
) -> None:
    """`audit --fix --yes` sets a misweighted server back, but leaves a server at weight 0 (out
    of rotation by weight, a drain) and one whose expected weight is 0 (that would drain it,
    past the caps) alone, saying so in its output and JSON."""
    from lbhealthd.oncall.audit import live
    from lbhealthd.store import Store
    from tests.daemon_harness import make_config

    driver = HAProxyDriver([haproxy.socket], 2.0)
    await driver.set_weight(sid("s2"), 0)
    await driver.set_weight(sid("s3"), 5)
    config = make_config(
        [haproxy.socket],
        tmp_path / "state",
        expected_weights={"default": 100, "s4": 0, "s5": 50},
    )
    try:
        outcome = await live(config, fix=True, yes=True, confirm=lambda _: False)
        weights = {m.id.server: m.weight for m in await snapshot(haproxy.socket)}
    finally:
        await driver.close()

    assert (weights["s2"], weights["s3"], weights["s4"], weights["s5"]) == (0, 100, 100, 50)
    assert outcome.document is not None
    assert outcome.document["fixed"] == ["api/s3: weight 5 -> 100", "api/s5: weight 100 -> 50"]
    # HAProxy's file gives s3 its expected 100 already, and s5 100 where 50 is expected.
    (about_file,) = [ln for ln in outcome.lines if ln.startswith("--fix changed runtime")]
    assert about_file == (
        "--fix changed runtime weights only: the HAProxy configuration gives api/s5 weight "
        "100 (expected 50); fix it there too, or the next reload brings the old weights back"
    )
    assert [(s["server"], s["weight"], s["expected"]) for s in outcome.document["skipped"]] == [
        ("api/s2", 0, 100),
        ("api/s4", 100, 0),
    ]
    text = "\n".join(outcome.lines)
    assert "  skipped: api/s2: weight 0 (out of rotation by weight" in text
    assert "  skipped: api/s4: expected weight 0 would take it out of rotation" in text
    fixes = [a for a in Store(tmp_path / "state").read_actions() if a.get("rule") == "audit_fix"]
    assert [a["server"] for a in fixes] == ["api/s3", "api/s5"]


def test_fix_says_a_reload_keeps_weights_the_file_already_gives() -> None:
    """When HAProxy's initial weight (its file's) is the one set back, nothing is to be fixed
    in the file, and --fix says so instead of asking for it."""
    from lbhealthd.oncall.audit import _file_lines

    s3 = Member(sid("s3"), "127.0.0.1", 1, AdminState.READY, OpState.UP, 5, 100)
    (line,) = _file_lines({"api": {sid("s3"): s3}}, [(sid("s3"), 100, 5)])
    assert line.endswith("already gives each of them that weight, so a reload keeps it")
