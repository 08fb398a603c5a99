"""The status page in a real browser: headless Chromium renders the page of a running daemon
(real HAProxy, real `lbhealthd run`) with a server an operator drained, and shows it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from lbhealthd.drivers.haproxy.process import free_port
from tests.daemon_harness import FAST, LBView, wait_for
from tests.fixtures_haproxy import ApiServers, HAProxyHandle
from tests.test_status_page import Page

pytestmark = pytest.mark.integration

REASON = 'disk <sdb> failing & "smart" errors'
PAGE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900")


def find_chromium() -> str:
    """Debian's chromium; the test skips without it unless LBHEALTHD_REQUIRE_TOOLS=1."""
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    )
    if found is None:
        message = "chromium not found in PATH; install Debian's chromium package"
        if os.environ.get("LBHEALTHD_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{message} (LBHEALTHD_REQUIRE_TOOLS=1)")
        pytest.skip(message)
    return found


async def run(*argv: str, timeout: float = 60) -> tuple[int, str, str]:
    """A command's exit code, stdout and stderr, without blocking the loop that serves the API
    servers' /health."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{argv[0]} did not finish within {timeout}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file; fails if it is not one."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def write_config(tmp_path: Path, socket: str, port: int) -> Path:
    doc = {
        "daemon": {
            "state_dir": str(tmp_path / "state"),
            "round_interval": "100ms",
            "control_socket": str(tmp_path / "run" / "control.sock"),
            "http": f"127.0.0.1:{port}",
        },
        "load_balancer": {"haproxy": {"sockets": [socket], "timeout": "1s"}},
        "pools": [{"name": "api", **FAST}],
    }
    path = tmp_path / "lbhealthd.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_chromium_shows_a_drained_server_on_the_status_page(
    haproxy: HAProxyHandle, api_servers: ApiServers, tmp_path: Path
) -> None:
    """With s2 drained by `lbhealthd drain --reason`, Chromium renders the page: a PNG of the
    window, and a DOM whose s2 row is in drain with the operator's reason, as text, and whose
    pool counts say 4 in, 1 out, 1 by an operator."""
    chromium = find_chromium()
    port = free_port()
    config = write_config(tmp_path, haproxy.socket, port)
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "daemon.log"
    with log.open("wb") as err:
        daemon = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "lbhealthd", "run", "-c", str(config)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
        )
    try:
        async with aiohttp.ClientSession() as http:

            async def get(path: str) -> tuple[int, Any, str]:
                try:
                    async with http.get(url.rstrip("/") + path) as resp:
                        return resp.status, resp.headers, await resp.text()
                except aiohttp.ClientConnectionError:
                    return 0, {}, ""

            await wait_for(lambda: _status_is(get("/healthz"), 200), 15, "/healthz 200")
            code, _, stderr = await run(
                *(sys.executable, "-m", "lbhealthd", "drain", "api/s2", "-c", str(config)),
                *("--reason", REASON),
            )
            assert code == 0, stderr

            async def s2_reported() -> bool:
                _, _, body = await get("/status")
                servers = {s["server"]: s for s in json.loads(body)["pools"][0]["servers"]}
                s2 = servers["api/s2"]
                return s2["lb_state"] == "drain" and (s2["override"] or {}).get("reason") == REASON

            await wait_for(s2_reported, 10, "the daemon reporting s2 drained")
            assert await LBView(haproxy.socket).drained() == {"s2"}

            status, headers, body = await get("/")
            assert status == 200 and 'id="server-api-s2" data-state="drain"' in body
            assert {k: headers[k] for k in PAGE_HEADERS} == PAGE_HEADERS

            profile = ("--user-data-dir=" + str(tmp_path / "chromium"),)
            png = tmp_path / "page.png"
            code, _, stderr = await run(
                chromium, *CHROMIUM_FLAGS, *profile, f"--screenshot={png}", url
            )
            assert code == 0 and png.exists(), stderr[-2000:]
            code, dom, stderr = await run(chromium, *CHROMIUM_FLAGS, *profile, "--dump-dom", url)
            assert code == 0, stderr[-2000:]
    finally:
        if daemon.returncode is None:
            daemon.terminate()
            await asyncio.wait_for(daemon.wait(), 10)

    assert png_size(png) == (1280, 900)
    assert png.stat().st_size > 10_000  # a rendered page, not a blank window
    page = Page(dom)
    row = page.attrs["server-api-s2"]
    assert (row["data-state"], row["data-owner"]) == ("drain", "override")
    assert REASON in page.text["server-api-s2"]  # rendered as text: < > & " survived escaping
    assert "<sdb>" not in dom  # never as markup
    assert all(page.attrs[f"server-api-s{i}"]["data-state"] == "ready" for i in (1, 3, 4, 5))
    counts = {k: page.text[f"pool-api-{k}"] for k in ("in", "out", "by-lbhealthd", "by-operator")}
    assert counts == {"in": "4", "out": "1", "by-lbhealthd": "0", "by-operator": "1"}


async def _status_is(answer: Any, code: int) -> bool:
    status, _, _ = await answer
    return bool(status == code)
