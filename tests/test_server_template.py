"""``server-template`` lines of an HAProxy file expand into the servers HAProxy 2.6 makes of
them, and the file audit compares those servers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lbhealthd.drivers.haproxy.config_file import parse_backends
from lbhealthd.drivers.haproxy.config_parser import MAX_TEMPLATE_SERVERS, template_numbers
from lbhealthd.drivers.haproxy.driver import HAProxyDriver
from lbhealthd.drivers.haproxy.process import find_haproxy
from lbhealthd.oncall.audit import candidate
from tests.daemon_harness import make_config
from tests.test_audit import RawConfig


@pytest.mark.parametrize(
    ("arg", "numbers"),
    [
        ("3", [1, 2, 3]),
        ("1", [1]),
        ("5-7", [5, 6, 7]),
        ("4-4", [4]),
        ("03-4", [3, 4]),
        ("2x", [1, 2]),  # read like atoi, as HAProxy does
        ("2-3x", [2, 3]),
        ("+2", [1, 2]),
        ("1-2-3", [1, 2]),
    ],
)
def test_template_numbers(arg: str, numbers: list[int]) -> None:
    assert list(template_numbers(arg, 1)) == numbers


@pytest.mark.parametrize("arg", ["0", "x", "3-1", "1-", "-2", " -2", "0-2"])
def test_template_numbers_refuses_what_haproxy_refuses(arg: str) -> None:
    with pytest.raises(ValueError, match=f"line 9: wrong server-template number or range {arg!r}"):
        template_numbers(arg, 9)


def test_template_numbers_limit() -> None:
    assert len(template_numbers(str(MAX_TEMPLATE_SERVERS), 1)) == MAX_TEMPLATE_SERVERS
    assert len(template_numbers(f"2-{MAX_TEMPLATE_SERVERS + 1}", 1)) == MAX_TEMPLATE_SERVERS
    with pytest.raises(ValueError, match="makes more than"):
        template_numbers(f"1-{MAX_TEMPLATE_SERVERS + 1}", 1)


TEMPLATE_CASES = [
    pytest.param(
        "backend api\n    server-template web 3 api.svc:8080 weight 7 check\n",
        {
            "api": [
                ("web1", "api.svc:8080", 7, True, False, 2),
                ("web2", "api.svc:8080", 7, True, False, 2),
                ("web3", "api.svc:8080", 7, True, False, 2),
            ]
        },
        id="count",
    ),
    pytest.param(
        "backend api\n    server s0 x:1\n    server-template app 05-6 x weight 9\n"
        "    server s9 x:2\n",
        {
            "api": [
                ("s0", "x:1", 1, False, False, 2),
                ("app5", "x", 9, False, False, 3),
                ("app6", "x", 9, False, False, 3),
                ("s9", "x:2", 1, False, False, 4),
            ]
        },
        id="range-among-servers-no-leading-zeros",
    ),
    pytest.param(
        "defaults\n    default-server weight 40 disabled\nbackend api\n"
        "    server-template t 2 x:1 enabled\n",
        {"api": [("t1", "x:1", 40, False, False, 4), ("t2", "x:1", 40, False, False, 4)]},
        id="default-server-applies",
    ),
    pytest.param(
        "backend a\n    server-template s 1 x:1\nbackend b\n    server-template s 1 x:1\n",
        {"a": [("s1", "x:1", 1, False, False, 2)], "b": [("s1", "x:1", 1, False, False, 4)]},
        id="same-names-in-two-backends",
    ),
    pytest.param(
        "frontend fe\n    server-template s 2 x:1\nbackend api\n",
        {"api": []},
        id="outside-a-backend-ignored",
    ),
]


@pytest.mark.parametrize(("text", "expected"), TEMPLATE_CASES)
def test_parse_server_template(text: str, expected: dict[str, list[tuple[object, ...]]]) -> None:
    parsed = parse_backends(text)
    assert {
        name: [dataclasses.astuple(s) for s in servers] for name, servers in parsed.items()
    } == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("backend api\n  server-template s 2\n", "line 2: 'server-template' expects"),
        ("backend api\n  server-template s 0 x:1\n", "line 2: wrong server-template number"),
        (
            "backend api\n  server s2 x:1\n  server-template s 1-2 x:1\n",
            r"line 3: another server named 's2' in backend \(line 2\)",
        ),
        ("backend api\n  server-template s 2 x:1 weight 257\n", "line 2: weight 257"),
    ],
    ids=["no-address", "zero", "name-taken", "weight-range"],
)
def test_parse_server_template_refuses(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_backends(text)


TEMPLATE_CFG = """\
global
    stats socket {sock} mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend fe
    bind 127.0.0.1:{port}
    default_backend api
backend api
    default-server weight 100
    server-template s 2 127.0.0.1:9
    server-template s 3-4 127.0.0.1:9 weight 1
    server s5 127.0.0.1:9
"""


def require_haproxy() -> str:
    binary = find_haproxy()
    if binary is None:
        pytest.skip("haproxy binary not found in PATH or /usr/sbin; install the haproxy package")
    return binary


@pytest.mark.integration
async def test_template_names_and_weights_are_what_haproxy_loads(tmp_path: Path) -> None:
    """The servers parsed from the templates are the ones HAProxy runs, with their weights."""
    binary = require_haproxy()
    async with RawConfig(tmp_path / "raw", TEMPLATE_CFG, binary) as proc:
        parsed = parse_backends(proc.config_path.read_text())
        driver = HAProxyDriver([proc.socket], 2.0)
        try:
            members = (await driver.snapshot("api")).members
        finally:
            await driver.close()
    live = {m.id.server: m.initial_weight for m in members}
    assert {s.name: s.weight for s in parsed["api"]} == live
    assert live == {"s1": 100, "s2": 100, "s3": 1, "s4": 1, "s5": 100}


@pytest.mark.integration
def test_audit_of_a_file_compares_templated_servers(tmp_path: Path) -> None:
    """`audit --haproxy-cfg`: a weight drift on a templated server is found, with its line; a
    file whose templates give the expected servers and weights is clean."""
    require_haproxy()
    text = TEMPLATE_CFG.format(sock=tmp_path / "unused.sock", port=8080)
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    config = make_config(
        ["unix:/nonexistent.sock"],
        tmp_path / "state",
        servers=["s1", "s2", "s3", "s4", "s5"],
        expected_weights={"default": 100},
    )
    outcome = candidate(config, str(path))
    assert outcome.code == 1, outcome.lines
    assert outcome.lines[1:] == (
        f"{path}: 2 difference(s)",
        "  weight              api/s3: weight 1 in haproxy.cfg line 14, expected 100",
        "  weight              api/s4: weight 1 in haproxy.cfg line 14, expected 100",
    )

    path.write_text(text.replace(" weight 1\n", "\n"))
    outcome = candidate(config, str(path))
    assert outcome.code == 0, outcome.lines
