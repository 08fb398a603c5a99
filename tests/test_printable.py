"""Free text (reasons, operator names, HAProxy's messages) cannot forge what a person reads:
control characters are escaped in status tables, command output and console logs, while JSON
keeps the text and escapes it the JSON way."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import structlog

from lbhealthd import logs, status
from lbhealthd.cli import main
from lbhealthd.drivers.haproxy.process import HAProxyProcess, ServerSpec, find_haproxy
from lbhealthd.oncall.commands import dumps
from lbhealthd.printable import printable
from tests.daemon_harness import make_config

FORGED = "disk full\n  s9      ready  100/100  ready  -      3ms  -  \x1b[32mall good\x1b[0m"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("disk full on /var", "disk full on /var"),
        ("ünïcødé 名前 ok", "ünïcødé 名前 ok"),
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("\x1b[32mgreen\x1b[0m", "\\x1b[32mgreen\\x1b[0m"),
        ("nul\x00 del\x7f c1\x9b", "nul\\x00 del\\x7f c1\\x9b"),
        ("left\u202etfel", "left\\u202etfel"),
        ("line\u2028sep", "line\\u2028sep"),
        ("lone \udc80 surrogate", "lone \\udc80 surrogate"),
        ("back\\slash", "back\\slash"),
    ],
    ids=[
        "plain",
        "unicode",
        "newline-cr-tab",
        "ansi",
        "nul-del-c1",
        "bidi",
        "line-sep",
        "surrogate",
        "backslash-kept",
    ],
)
def test_printable(text: str, expected: str) -> None:
    """Every non-printable character becomes an escape; printable text, of any script, stays."""
    assert printable(text) == expected
    assert printable(text).isprintable()


def doc_with(reason: str, who: str) -> dict[str, Any]:
    server = {
        "server": "api/s1",
        "lb_state": "drain",
        "lb_op": "up",
        "weight": 100,
        "initial_weight": 100,
        "desired": "drain",
        "owner": "operator",
        "probe": {"outcome": "error", "detail": "boom\n\x1b[2J", "signals": {}},
        "override": {"kind": "drain", "reason": reason, "who": who},
    }
    return {
        "version": 1,
        "daemon": {"running": False},
        "pools": [
            {
                "name": "api",
                "size": 1,
                "out": 1,
                "in_service": 0,
                "max_out": 1,
                "min_in_service": 0,
                "alerts": [{"rule": "audit", "message": "api/s1: weight 1\nALERT none"}],
                "servers": [server],
            }
        ],
    }


def test_status_table_cannot_be_forged_by_a_reason() -> None:
    """A reason, an operator name, a probe detail and an alert with newlines and ANSI codes
    stay inside their own row, escaped; a plain reason is shown as written."""
    table = status.render(doc_with(FORGED, "eve\r\x1b[1mroot"))
    lines = table.split("\n")
    assert len(lines) == 6  # daemon, blank, pool, alert, header, s1
    assert all(line.isprintable() for line in lines)
    assert lines[3] == "  ALERT audit: api/s1: weight 1\\nALERT none"
    row = lines[5]
    assert row.startswith("  s1 ")
    assert "error: boom\\n\\x1b[2J" in row
    assert row.endswith("drain by eve\\r\\x1b[1mroot, until restored: " + printable(FORGED))

    plain = status.render(doc_with("disk full on /var", "alice (uid 1000, cli)"))
    assert plain.split("\n")[5].endswith(
        "drain by alice (uid 1000, cli), until restored: disk full on /var"
    )


def test_status_json_keeps_the_text_and_escapes_it() -> None:
    """`status --json` carries the reason unchanged, JSON-escaped: no raw control character."""
    text = dumps(doc_with(FORGED, "eve"))
    assert "\x1b" not in text and "\\u001b[32m" in text
    assert json.loads(text)["pools"][0]["servers"][0]["override"]["reason"] == FORGED


def test_console_log_lines_cannot_be_forged() -> None:
    """On the console, values and the event with newlines or ANSI codes (with or without
    spaces: structlog quotes only the former) stay on their line, escaped; the JSON format
    keeps the text, JSON-escaped."""
    overwrite = "\x1b[1A\x1b[2K\x1b[32mserver_restored"  # up one line, erase it, paint
    try:
        out = io.StringIO()
        logs.configure("console", stream=out, level=logging.INFO)
        log = structlog.get_logger("t")
        log.warning("override_set", reason=overwrite, who="eve\u2028root", note=FORGED)
        log.warning("event\nforged", reason="plain")
        lines = out.getvalue().split("\n")
        assert lines[-1] == "" and len(lines) == 3
        assert all(line.isprintable() for line in lines)
        assert f"reason={printable(overwrite)}" in lines[0]
        assert "who=eve\\u2028root" in lines[0] and "override_set" in lines[0]
        assert "event\\nforged" in lines[1] and "reason=plain" in lines[1]

        out = io.StringIO()
        logs.configure("json", stream=out, level=logging.INFO)
        structlog.get_logger("t").warning("override_set", reason=FORGED)
        [line] = out.getvalue().splitlines()
        assert json.loads(line)["reason"] == FORGED
    finally:
        structlog.reset_defaults()


@pytest.mark.integration
def test_haproxy_messages_are_escaped_in_audit_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A candidate whose unknown keyword carries ESC and CR codes cannot paint a fake verdict
    through HAProxy's message: the output shows them escaped, one message per line."""
    if find_haproxy() is None:
        pytest.skip("haproxy binary not installed")
    servers = [ServerSpec(f"s{i}", "127.0.0.1", 20000 + i, 100) for i in range(1, 3)]
    text = HAProxyProcess(tmp_path / "cand", {"api": servers}).config_text()
    bad = tmp_path / "bad.cfg"
    bad.write_text(
        text.replace(
            "backend api\n", "backend api\n    bogus\\x1b[2K\\rhaproxy\\x20-c:\\x20valid\n"
        )
    )
    config = make_config(["unix:/nonexistent.sock"], tmp_path / "state")
    conf = tmp_path / "lbhealthd.yaml"
    conf.write_text(json.dumps(json.loads(config.model_dump_json(by_alias=True))))

    assert main(["audit", "-c", str(conf), "--haproxy-cfg", str(bad)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("haproxy -c: INVALID: ")
    assert "\x1b" not in out and "\r" not in out
    assert "bogus\\x1b[2K\\rhaproxy -c: valid" in out
