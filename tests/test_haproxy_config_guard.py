"""A candidate haproxy.cfg is read the way HAProxy reads it, and one that would run code while
HAProxy parses it is refused before ``haproxy -c`` starts (real HAProxy 2.6, with Lua)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbhealthd.drivers.haproxy.config_file import check_candidate, read_candidate, syntax_check
from lbhealthd.drivers.haproxy.config_guard import refusals
from lbhealthd.drivers.haproxy.config_words import LineError, Words, split_words
from lbhealthd.drivers.haproxy.process import HAProxyProcess, ServerSpec, find_haproxy
from lbhealthd.errors import UnsafeConfig
from lbhealthd.oncall.audit import candidate
from tests.daemon_harness import make_config

# ---- split_words: HAProxy's parse_line ---------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "  server s1 127.0.0.1:80 weight 10",
            Words(("server", "s1", "127.0.0.1:80", "weight", "10")),
        ),
        ("\r \tlua-load x.lua", Words(("lua-load", "x.lua"))),
        ("log-format \"%t %s\" 'a b' c\\ d", Words(("log-format", "%t %s", "a b", "c d"))),
        ("lua\\x2dload x", Words(("lua-load", "x"))),
        ('lu"a-lo"ad x', Words(("lua-load", "x"))),
        ("lua-load\\x00zz x", Words(("lua-load", "x"))),
        ("a b # c d", Words(("a", "b"))),
        ("a\\#b '#' \"#\"", Words(("a#b", "#", "#"))),
        ('a \\1 \\$ "\\$x"', Words(("a", "\\1", "\\$", "$x"))),
        ("global\rlua-load x", Words(("global",))),
        ("a \r lua-load", Words(("a", "lua-load"))),
        ('a "" b', Words(("a", "", "b"))),
        ('"${K}" x', Words(("${K}", "x"), env_from=0)),
        ('setenv K "$HOME" x', Words(("setenv", "K", "$HOME", "x"), env_from=2)),
        ('a "${X[*]}" b', Words(("a", "${X[*]}", "b"), env_from=1)),
        ('a "${X-de"f}" b', Words(("a", '${X-de"f}', "b"), env_from=1)),
        ("a '$X' $Y", Words(("a", "$X", "$Y"))),
        ("", Words(())),
        ("   # only a comment", Words(())),
    ],
    ids=[
        "plain",
        "leading-cr-and-spaces",
        "quotes-and-escaped-space",
        "hex-escape",
        "quotes-inside-a-word",
        "nul-ends-the-word",
        "comment",
        "hash-escaped-or-quoted",
        "other-backslashes-stay",
        "cr-ends-the-line",
        "cr-in-a-separator",
        "empty-word",
        "keyword-from-env",
        "argument-from-env",
        "word-expansion",
        "default-value-runs-to-brace",
        "no-env-outside-double-quotes",
        "empty",
        "comment-only",
    ],
)
def test_split_words(line: str, expected: Words) -> None:
    """Lines are cut into the words HAProxy 2.6 makes of them."""
    assert split_words(line) == expected


@pytest.mark.parametrize(
    "line",
    ['a "b', "a 'b", "a \\xZ1", "a \\x4", 'a "$1"', 'a "${X"', 'a "${X[1]}"', 'a "$.NOPE"'],
    ids=["dquote", "squote", "bad-hex", "short-hex", "var-digit", "brace", "expand", "pseudo"],
)
def test_split_words_refuses_what_haproxy_refuses(line: str) -> None:
    """A line HAProxy cannot split raises LineError (HAProxy skips it with an alert)."""
    with pytest.raises(LineError):
        split_words(line)


# ---- refusals ----------------------------------------------------------------------------------

HARMLESS = """\
global
    tune.lua.maxmem 10
    setenv GREETING hello
    presetenv OTHER "x y"
    external-check
    insecure-fork-wanted
    # lua-load /etc/haproxy/evil.lua (a comment)
defaults
    mode http
program sidecar
    command /bin/true
backend api
    option external-check
    external-check command /bin/true
    http-request set-header X-Note lua-load
    filter compression
    server lua-load 127.0.0.1:1 ssl ca-file /etc/ssl/certs/ca-certificates.crt
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("global\n    lua-load /tmp/e.lua\n", [(2, "lua-load")]),
        (
            "global\n  lua-load-per-thread e.lua\n  lua-prepend-path /x/?.lua\n",
            [(2, "lua-load-per-thread"), (3, "lua-prepend-path")],
        ),
        ("global\n  lua-anything-new x\n", [(2, "lua-anything-new")]),
        (
            "global\n  ssl-provider-path /tmp\n  ssl-provider evil\n  ssl-engine x\n",
            [(2, "ssl-provider-path"), (3, "ssl-provider"), (4, "ssl-engine")],
        ),
        ("frontend f\n  filter opentracing config ot.cfg\n", [(2, "filter opentracing")]),
        ('global\n  setenv K lua-load\n  "${K}" e.lua\n', [(3, "${K}")]),
        ('frontend f\n  filter "${F}" config x\n', [(2, "filter ${F}")]),
        ("global\n  lua\\x2dload e.lua\n", [(2, "lua-load")]),
        ("global\n  lua-load\\x00junk e.lua\n", [(2, "lua-load")]),
        ("global\n  'lua-'\"load\" e.lua\n", [(2, "lua-load")]),
        ("global\n  no lua-load e.lua\n", [(2, "lua-load")]),
        ("global\n  default ssl-provider x\n", [(2, "ssl-provider")]),
        ("global\n\r lua-load e.lua\n", [(2, "lua-load")]),
        ("global\n  maxconn 10\rlua-load e.lua\n", [(2, "lua-load")]),
        ('global\n  lua-load "e.lua\n', [(2, "")]),
        (HARMLESS, []),
    ],
    ids=[
        "lua-load",
        "per-thread-and-path",
        "any-lua",
        "openssl-libraries",
        "opentracing",
        "keyword-from-env",
        "filter-type-from-env",
        "hex-escaped",
        "nul-truncated",
        "quoted-in-pieces",
        "no-prefix",
        "default-prefix",
        "leading-cr",
        "after-cr",
        "unreadable-line",
        "harmless",
    ],
)
def test_refusals(text: str, expected: list[tuple[int, str]]) -> None:
    """Directives that run code are found however they are written; the harmless ones that
    merely mention Lua, run programs only at run time, or read files are not."""
    assert [(r.line, r.directive) for r in refusals(text.encode())] == expected


def test_read_candidate_refuses_what_is_not_a_small_regular_file(tmp_path: Path) -> None:
    """A FIFO does not block the read, a directory or device is refused, and so is a file
    larger than any configuration; a regular file is read whole."""
    fifo = tmp_path / "fifo.cfg"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path, Path("/dev/zero")):
        with pytest.raises(OSError, match=r"not a regular file|Is a directory"):
            read_candidate(path)
    big = tmp_path / "big.cfg"
    with big.open("wb") as f:
        f.truncate(16 * 1024 * 1024 + 1)
    with pytest.raises(OSError, match="larger than"):
        read_candidate(big)
    small = tmp_path / "ok.cfg"
    small.write_bytes(b"global\n")
    assert read_candidate(small) == b"global\n"


# ---- against a real HAProxy --------------------------------------------------------------------


def require_haproxy() -> str:
    binary = find_haproxy()
    if binary is None:
        pytest.skip("haproxy binary not found in PATH or /usr/sbin; install the haproxy package")
    return binary


def lua_script(tmp_path: Path) -> tuple[Path, Path]:
    """A Lua script that leaves a marker file when it runs, and that marker's path."""
    marker = tmp_path / "lua-ran"
    script = tmp_path / "evil.lua"
    script.write_text(f'local f = io.open("{marker}", "w")\nf:write("ran")\nf:close()\n')
    return script, marker


def good_config(tmp_path: Path) -> str:
    servers = [ServerSpec(f"s{i}", "127.0.0.1", 20001 + i, 100) for i in range(1, 6)]
    proc = HAProxyProcess(tmp_path / "cand", {"api": servers})
    return proc.config_text()


LUA_VARIANTS = [
    pytest.param("    lua-load {script}", id="lua-load"),
    pytest.param("    lua-load-per-thread {script}", id="lua-load-per-thread"),
    pytest.param('    setenv K lua-load\n    "${{K}}" {script}', id="keyword-from-setenv"),
    pytest.param("    lua\\x2dload {script}", id="hex-escaped"),
    pytest.param("    no lua-load {script}", id="no-prefix"),
    pytest.param("\r    lua-load {script}", id="leading-cr"),
]


@pytest.mark.integration
@pytest.mark.parametrize("directive", LUA_VARIANTS)
def test_candidate_that_runs_lua_is_refused_and_the_script_never_runs(
    tmp_path: Path, directive: str
) -> None:
    """HAProxy's own check runs the script of such a file (the marker appears); lbhealthd's
    check refuses the file with exit 2 naming the line, and the script does not run."""
    binary = require_haproxy()
    script, marker = lua_script(tmp_path)
    text = good_config(tmp_path).replace("global\n", f"global\n{directive.format(script=script)}\n")
    path = tmp_path / "candidate.cfg"
    path.write_text(text)

    subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, timeout=30, check=False)
    assert marker.exists(), "haproxy -c itself runs the script: the marker works"
    marker.unlink()

    outcome = candidate(make_config(["unix:/nonexistent.sock"], tmp_path / "state"), str(path))
    assert outcome.code == 2
    assert outcome.lines[0].startswith(f"not checked: {path} would run code")
    line = 2 + directive.count("\n")  # the line that loads the script
    assert outcome.lines[1].startswith(f"  line {line}: ")
    assert outcome.document is not None and outcome.document["refused"][0]["line"] == line
    with pytest.raises(UnsafeConfig):
        syntax_check(path, binary)
    assert not marker.exists()


@pytest.mark.integration
async def test_audit_command_refuses_lua_and_still_checks_a_harmless_file(tmp_path: Path) -> None:
    """`lbhealthd audit --haproxy-cfg`: a file with lua-load exits 2 without running it (JSON
    says which line); the same file without that line, but with harmless Lua tuning, an
    external check and setenv, is checked by HAProxy and found valid."""
    require_haproxy()
    script, marker = lua_script(tmp_path)
    harmless = good_config(tmp_path).replace(
        "global\n",
        "global\n    tune.lua.maxmem 10\n    setenv GREETING hello\n    external-check\n"
        "    insecure-fork-wanted\n",
    )
    evil = harmless.replace("global\n", f"global\n    lua-load {script}\n")
    config = make_config(["unix:/nonexistent.sock"], tmp_path / "state")
    conf = tmp_path / "lbhealthd.yaml"
    conf.write_text(json.dumps(json.loads(config.model_dump_json(by_alias=True))))
    (tmp_path / "evil.cfg").write_text(evil)
    (tmp_path / "harmless.cfg").write_text(harmless)

    async def audit(name: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "lbhealthd",
            "audit",
            "-c",
            str(conf),
            "--json",
            "--haproxy-cfg",
            str(tmp_path / name),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    code, out = await audit("evil.cfg")
    assert code == 2
    assert json.loads(out)["refused"] == [
        {
            "line": 2,
            "directive": "lua-load",
            "why": "runs a Lua script while HAProxy parses the file",
        }
    ]
    assert not marker.exists()

    code, out = await audit("harmless.cfg")
    doc = json.loads(out)
    assert doc["syntax_ok"] is True, doc
    assert code == 0, doc


@pytest.mark.integration
def test_check_sees_the_bytes_it_judged_and_relative_paths_of_the_original(
    tmp_path: Path,
) -> None:
    """HAProxy checks a copy of what was judged (a later change to the file is not read), its
    messages name the original file, and ``default-path config`` resolves paths next to it."""
    binary = require_haproxy()
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    (conf_dir / "errors").mkdir()
    (conf_dir / "errors" / "503.http").write_text(
        "HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\nbusy\r\n"
    )
    text = (
        good_config(tmp_path)
        .replace("global\n", "global\n    default-path config\n")
        .replace("backend api\n", "backend api\n    errorfile 503 errors/503.http\n")
    )
    path = conf_dir / "candidate.cfg"
    path.write_text(text)
    data = read_candidate(path)
    path.write_text(text.replace("global\n", f"global\n    lua-load {tmp_path}/x.lua\n"))
    ok, message = check_candidate(data, path, binary)
    assert ok, message

    broken = data.replace(b"backend api\n", b"backend api\n    bogus-keyword\n")
    ok, message = check_candidate(broken, path, binary)
    assert not ok
    assert f"parsing [{path}:" in message and "bogus-keyword" in message
