"""The control API on its unix socket, over the in-memory LB: what it accepts, what it refuses
before recording anything, how concurrent drains are kept within the caps, who may use it,
where the socket may live; and the on-call commands' side: whom they trust, and what they say
when the daemon does not answer."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import multiprocessing
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import yaml

from lbhealthd.cli import main as cli_main
from lbhealthd.config import Config
from lbhealthd.daemon.control import ControlServer
from lbhealthd.errors import ControlError
from lbhealthd.model import OverrideKind
from lbhealthd.oncall import client
from lbhealthd.report import RoundReport
from lbhealthd.store import Store
from lbhealthd.writer import LbWriter
from tests.daemon_harness import wait_for
from tests.test_reconciler import Harness, sid


class Daemon:
    """The daemon as the control API sees it: a Harness whose rounds run only when a test says.

    ``next_round`` waits at ``gate`` (open unless a test closes it); ``waiting`` counts the
    requests held there."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0

    @property
    def config(self) -> Config:
        return self.h.config

    @property
    def report(self) -> RoundReport:
        return self.h.reconciler.report

    @property
    def store(self) -> Store:
        return self.h.store

    @property
    def writer(self) -> LbWriter:
        return self.h.reconciler.writer

    async def next_round(self) -> bool:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return True


class Control:
    """A ControlServer on a socket in tmp_path, and a client for it."""

    def __init__(self, h: Harness, path: Path) -> None:
        self.h = h
        self.daemon = Daemon(h)
        self.path = path
        self.server = ControlServer(self.daemon, str(path))

    async def post(self, route: str, body: str | dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST ``body`` (a dict, or raw text sent as it is) and return (status, JSON)."""
        data = body if isinstance(body, str) else json.dumps(body)
        connector = aiohttp.UnixConnector(path=str(self.path))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(
                f"http://lbhealthd{route}",
                data=data,
                headers={"Content-Type": "application/json"},
            ) as resp,
        ):
            return resp.status, await resp.json(content_type=None)


@pytest.fixture
async def control(make: Callable[..., Harness], tmp_path: Path) -> AsyncIterator[Control]:
    """A control server over a harness that has run one round (the pool is known)."""
    h = make()
    await h.tick()
    c = Control(h, tmp_path / "run" / "control.sock")
    await c.server.start()
    try:
        yield c
    finally:
        await c.server.close()


# --- durations ------------------------------------------------------------------------------

YEAR = 365 * 86400
OUT_OF_RANGE = ["Infinity", "-Infinity", "NaN", "-5", "1e30", str(YEAR + 1), '"10m"', "true"]


@pytest.mark.parametrize("for_s", OUT_OF_RANGE)
@pytest.mark.parametrize("route", ["/drain", "/restore"])
async def test_a_duration_out_of_range_is_refused_before_anything_is_recorded(
    control: Control, route: str, for_s: str
) -> None:
    """An infinite, NaN, negative, too long or non-numeric for_s is a 400 naming for_s and the
    maximum; the override in place stays as it was and the LB is untouched."""
    control.h.override("s1", OverrideKind.DRAIN)
    before = control.h.store.load_overrides()
    body = f'{{"server": "api/s1", "reason": "disk full", "for_s": {for_s}}}'
    status, doc = await control.post(route, body)
    assert status == 400, doc
    assert "for_s" in doc["error"] and "365d" in doc["error"]
    assert control.h.store.load_overrides() == before
    assert control.h.driver.sent() == []


@pytest.mark.parametrize("for_s", [60, YEAR])
async def test_a_duration_in_range_sets_the_expiry(control: Control, for_s: int) -> None:
    """A for_s up to the maximum is accepted and the override expires that long after."""
    status, doc = await control.post(
        "/drain", {"server": "api/s1", "reason": "disk full", "for_s": for_s}
    )
    assert status == 200, doc
    override = control.h.store.load_overrides()[sid("s1")]
    assert override.expires_at is not None
    assert override.expires_at - override.created_at == pytest.approx(for_s)


# --- caps -----------------------------------------------------------------------------------


async def test_concurrent_drains_stay_within_max_drained(control: Control) -> None:
    """Three drains sent at once, before any round applies them, to a pool that lets two out:
    two are recorded, the third is refused naming max_drained (409); the next round drains
    exactly the two."""
    control.daemon.gate.clear()  # no round runs until every answer is in
    tasks = [
        asyncio.create_task(control.post("/drain", {"server": f"api/{name}", "reason": "x"}))
        for name in ("s1", "s2", "s3")
    ]
    await wait_for(
        lambda: control.daemon.waiting + sum(t.done() for t in tasks) == 3, 5, "three answers"
    )
    control.daemon.gate.set()
    answers = await asyncio.gather(*tasks)
    assert sorted(status for status, _ in answers) == [200, 200, 409]
    (refusal,) = [doc for status, doc in answers if status == 409]
    assert "max_drained 40%" in refusal["error"]
    assert len(control.h.store.load_overrides()) == 2
    await control.h.tick()
    assert len(control.h.driver.drained()) == 2


async def test_a_forced_drain_goes_beyond_the_overrides_recorded(control: Control) -> None:
    """With two drains recorded and not yet applied, a third is refused; --force records it."""
    for name in ("s1", "s2"):
        assert (await control.post("/drain", {"server": f"api/{name}", "reason": "x"}))[0] == 200
    body = {"server": "api/s3", "reason": "x"}
    assert (await control.post("/drain", body))[0] == 409
    assert (await control.post("/drain", {**body, "force": True}))[0] == 200
    assert len(control.h.store.load_overrides()) == 3


# --- who may use the socket -----------------------------------------------------------------

DAEMON_UID = 65532  # the daemon's user and group in the tests below (no name needed)
NOBODY = 65534

_SPAWN = multiprocessing.get_context("spawn")
_FORK = multiprocessing.get_context("fork")


class _StatusOnly:
    """A daemon with no pool: enough for GET /status."""

    report = RoundReport(())


def _hide_other_processes() -> str | None:
    """Mount a /proc that shows other users' processes to no one (systemd's
    ProtectProc=invisible), in a mount namespace of this process alone; why not, if it cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    clone_newns, ms_rec, ms_private = 0x00020000, 0x4000, 0x40000
    steps = [
        ("unshare", lambda: libc.unshare(clone_newns)),
        ("make / private", lambda: libc.mount(b"none", b"/", None, ms_rec | ms_private, None)),
        ("mount /proc", lambda: libc.mount(b"proc", b"/proc", b"proc", 0, b"hidepid=invisible")),
    ]
    for what, step in steps:
        if step() != 0:
            return f"{what}: {os.strerror(ctypes.get_errno())}"
    return None


def _serve_with_proc_hidden(path: str, said: Any, stop: Any) -> None:
    """The control server as the shipped unit runs it: its own user, other processes hidden."""
    problem = _hide_other_processes()
    if problem is not None:
        said.put(problem)
        return
    # What the server imports on demand, imported while the interpreter's files are readable.
    import concurrent.futures.thread  # noqa: F401

    os.setgroups([])
    os.setgid(DAEMON_UID)
    os.setuid(DAEMON_UID)

    async def serve() -> None:
        server = ControlServer(cast(Any, _StatusOnly()), path)
        try:
            await server.start()
        except Exception as exc:
            said.put(f"start failed: {exc!r}")
            return
        said.put("listening")
        await asyncio.to_thread(stop.wait, 30)
        await server.close()

    asyncio.run(serve())


def _status_as(path: str, groups: list[int], said: Any) -> None:
    """GET /status as user nobody with ``groups``; puts the status code or the error's name."""
    os.setgroups(groups)
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
        s.sendall(b"GET /status HTTP/1.0\r\n\r\n")
        said.put(s.recv(100).decode(errors="replace").split(" ")[1])  # the status code
    except OSError as exc:
        said.put(type(exc).__name__)
    finally:
        s.close()


async def _status_from_nobody(path: str, groups: list[int]) -> str:
    said = _FORK.Queue()
    child = _FORK.Process(target=_status_as, args=(path, groups, said))
    child.start()
    try:
        return str(await asyncio.to_thread(said.get, True, 10))
    finally:
        await asyncio.to_thread(child.join, 10)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may traverse (the test's own tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="lbhealthd-test-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as two other users")
async def test_a_member_of_the_socket_group_is_let_in_with_other_processes_hidden(
    shared_dir: Path,
) -> None:
    """With /proc hiding other users' processes from the daemon (ProtectProc=invisible), a
    member of the socket's group gets 200, by its supplementary groups as the socket gives
    them; a non-member who could connect (socket loosened to 0666) still gets 403."""
    base = shared_dir
    os.chown(base, DAEMON_UID, DAEMON_UID)
    os.chmod(base, 0o755)
    path = str(base / "run" / "control.sock")
    said, stop = _SPAWN.Queue(), _SPAWN.Event()
    daemon = _SPAWN.Process(target=_serve_with_proc_hidden, args=(path, said, stop))
    daemon.start()
    try:
        started = await asyncio.to_thread(said.get, True, 20)
        if str(started).startswith(("unshare", "make / private", "mount /proc")):
            pytest.skip(f"cannot hide /proc here ({started})")
        assert started == "listening"
        assert os.stat(path).st_gid == DAEMON_UID
        assert await _status_from_nobody(path, [DAEMON_UID]) == "200"
        os.chmod(base / "run", 0o755)
        os.chmod(path, 0o666)  # an operator's mistake: the daemon still says no to others
        assert await _status_from_nobody(path, []) == "403"
    finally:
        stop.set()
        await asyncio.to_thread(daemon.join, 10)


# --- the socket's directory, and the daemon at the other end ---------------------------------


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o730])
async def test_the_socket_is_not_made_in_a_directory_others_may_write(
    make: Callable[..., Harness],
    tmp_path: Path,
    mode: int,
) -> None:
    """A socket directory writable by its group or by everyone is refused at start (another
    user could replace the socket); nothing is created in it."""
    h = make()
    directory = tmp_path / "run"
    directory.mkdir()
    os.chmod(directory, mode)
    server = ControlServer(Daemon(h), str(directory / "control.sock"))
    with pytest.raises(ControlError, match=f"{directory}.*writable by"):
        await server.start()
    assert list(directory.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory to another user")
async def test_the_socket_is_not_made_in_a_directory_of_another_user(
    make: Callable[..., Harness],
    tmp_path: Path,
) -> None:
    """A socket directory owned by another user (who could replace the socket) is refused."""
    h = make()
    directory = tmp_path / "run"
    directory.mkdir(mode=0o755)
    os.chown(directory, NOBODY, NOBODY)
    server = ControlServer(Daemon(h), str(directory / "control.sock"))
    with pytest.raises(ControlError, match=f"{directory}.*owned by uid {NOBODY}"):
        await server.start()
    assert list(directory.iterdir()) == []


@pytest.mark.parametrize("mode", [0o750, 0o700, 0o755])
async def test_the_socket_is_made_in_a_directory_only_its_owner_writes(
    make: Callable[..., Harness],
    tmp_path: Path,
    mode: int,
) -> None:
    """A directory only the daemon's user (or root) may write is used as it is."""
    h = make()
    directory = tmp_path / "run"
    directory.mkdir()
    os.chmod(directory, mode)
    server = ControlServer(Daemon(h), str(directory / "control.sock"))
    await server.start()
    try:
        assert (directory / "control.sock").is_socket()
    finally:
        await server.close()


DRAINED = json.dumps(
    {
        "result": "drained",
        "server": "api/s1",
        "path": "daemon",
        "applied": True,
        "lb_error": None,
        "lb_state": "drain",
        "until": None,
        "notes": [],
    }
).encode()


def _read_request(conn: socket.socket) -> bytes:
    """One whole HTTP request (head and Content-Length body) from ``conn``."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536) or b"\r\n\r\n"
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(v)
            for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
            if k.strip().lower() == b"content-length"
        ),
        0,
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _impostor(path: str, said: Any) -> None:
    """As user nobody, answer the next request on ``path`` as a daemon that drained api/s1."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(20)
    said.put("listening")
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        return
    with conn:
        conn.settimeout(5)
        _read_request(conn)
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(DRAINED)}\r\nConnection: close\r\n\r\n"
        conn.sendall(head.encode() + DRAINED)
    listener.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
@pytest.mark.parametrize(("state_owner", "trusted"), [(0, False), (NOBODY, True)])
def test_the_command_trusts_only_root_or_the_owner_of_state_dir_on_the_socket(
    shared_dir: Path, capsys: pytest.CaptureFixture[str], state_owner: int, trusted: bool
) -> None:
    """A process of user nobody answering on the control socket (planted through a directory
    everyone may write) is believed only when nobody owns state_dir, i.e. is the daemon's
    user; otherwise `drain` exits 2 naming the uid, and does not take the direct path."""
    run = shared_dir / "run"
    run.mkdir()
    os.chmod(run, 0o777)
    state = shared_dir / "state"
    state.mkdir(mode=0o750)
    os.chown(state, state_owner, state_owner)
    config = shared_dir / "lbhealthd.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "daemon": {"state_dir": str(state), "control_socket": str(run / "control.sock")},
                "load_balancer": {"haproxy": {"sockets": ["unix:/nonexistent/haproxy.sock"]}},
                "pools": [{"name": "api"}],
            }
        )
    )
    said = _FORK.Queue()
    child = _FORK.Process(target=_impostor, args=(str(run / "control.sock"), said))
    child.start()
    try:
        assert said.get(True, 10) == "listening"
        code = cli_main(["drain", "api/s1", "-c", str(config), "--reason", "x"])
    finally:
        child.join(25)
    out, err = capsys.readouterr()
    if trusted:
        assert code == 0 and "via the running daemon" in out, err
    else:
        assert code == 2
        assert f"uid {NOBODY}" in err and "not trusted" in err
        assert "drain: api/s1 is now" not in out + err and "daemon not running" not in err


def _config_file(directory: Path) -> Path:
    """A config whose control socket is ``directory``/control.sock and whose LB is nowhere."""
    path = directory / "lbhealthd.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "daemon": {
                    "state_dir": str(directory / "state"),
                    "control_socket": str(directory / "control.sock"),
                },
                "load_balancer": {"haproxy": {"sockets": ["unix:/nonexistent/haproxy.sock"]}},
                "pools": [{"name": "api"}],
            }
        )
    )
    return path


def _silent(sock: socket.socket) -> Iterator[None]:
    """Connections wait in the listen queue and are never answered."""
    yield


def _full(sock: socket.socket) -> Iterator[None]:
    """The listen queue is full: connecting fails at once with EAGAIN."""
    queued = []
    for _ in range(64):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.setblocking(False)
        try:
            c.connect(sock.getsockname())
        except BlockingIOError:
            c.close()
            break
        queued.append(c)
    try:
        yield
    finally:
        for c in queued:
            c.close()


def _hangs_up(sock: socket.socket) -> Iterator[None]:
    """Every connection is accepted, its request read, and closed without an answer."""

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                _read_request(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield


@pytest.mark.parametrize(
    ("behaviour", "words"),
    [
        (_silent, "did not answer within 0.5s"),
        (_full, "is not accepting connections"),
        (_hangs_up, "closed the connection without an answer"),
    ],
    ids=["silent", "queue full", "hangs up"],
)
def test_a_daemon_that_does_not_answer_is_a_clear_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    behaviour: Callable[[socket.socket], Iterator[None]],
    words: str,
) -> None:
    """A control socket that is flooded, stuck or drops the request makes `drain` exit 1 with
    what happened and what to check, no traceback, and no switch to the direct path (the
    daemon is running)."""
    monkeypatch.setattr(client, "TIMEOUT", 0.5)
    config = _config_file(tmp_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "control.sock"))
    listener.listen(0)
    with listener, contextlib.contextmanager(behaviour)(listener):
        code = cli_main(["drain", "api/s1", "-c", str(config), "--reason", "x"])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert words in err and "lbhealthd status" in err
    assert "Traceback" not in err and "daemon not running" not in out + err
