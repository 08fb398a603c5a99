"""How lbhealthd is run: the systemd notify protocol, the unit file, the image, the manifests."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from structlog.testing import capture_logs

from lbhealthd.agent import Agent, Load
from lbhealthd.cli import build_parser, cmd_run
from lbhealthd.cli.commands import cmd_reload
from lbhealthd.config import DaemonConfig, HAProxyConfig, load_config, parse_duration
from lbhealthd.daemon.sdnotify import Notifier
from lbhealthd.drivers.haproxy.process import find_haproxy
from lbhealthd.serving import fd_limit
from lbhealthd.store import Store
from tests.fixtures_haproxy import free_port
from tests.other_user import in_child, needs_root, shared_dir

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "lbhealthd.service"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SIDECAR = ROOT / "docs" / "kubernetes" / "lbhealthd-sidecar.yaml"
AGENT = ROOT / "docs" / "kubernetes" / "agent-sidecar.yaml"


# --- the notify protocol -------------------------------------------------------------------


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's, named by $NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    sock = _receiver(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_ready_watchdog_and_stopping_arrive_as_datagrams(notify_socket: socket.socket) -> None:
    """READY=1, WATCHDOG=1 and STOPPING=1 each reach $NOTIFY_SOCKET as one datagram."""
    notifier = Notifier.from_env()
    assert notifier.enabled
    assert notifier.ready()
    assert notifier.watchdog()
    assert notifier.stopping()
    assert notifier.notify("READY=1\nSTATUS=x")
    received = [notify_socket.recv(4096) for _ in range(4)]
    assert received == [b"READY=1", b"WATCHDOG=1", b"STOPPING=1", b"READY=1\nSTATUS=x"]
    notifier.close()


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``@name`` $NOTIFY_SOCKET is the abstract-namespace socket ``\\0name``."""
    name = f"lbhealthd-test-{uuid.uuid4().hex}"
    receiver = _receiver("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = Notifier.from_env()
        assert notifier.ready()
        assert receiver.recv(4096) == b"READY=1"
        notifier.close()
    finally:
        receiver.close()


def test_reloading_carries_the_monotonic_clock(notify_socket: socket.socket) -> None:
    """RELOADING=1 comes with MONOTONIC_USEC read from CLOCK_MONOTONIC, as notify-reload expects."""
    notifier = Notifier.from_env()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.close()
    lines = notify_socket.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_status_is_sent_on_one_line(notify_socket: socket.socket) -> None:
    """STATUS text with line breaks is flattened, so it cannot inject other assignments."""
    notifier = Notifier.from_env()
    assert notifier.status("2 drained\nREADY=1")
    notifier.close()
    assert notify_socket.recv(4096) == b"STATUS=2 drained READY=1"


def test_without_notify_socket_every_call_is_a_quiet_no_op(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without $NOTIFY_SOCKET (not under systemd) nothing is sent, nothing raises, nothing logs."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier.from_env()
    with capture_logs() as logs:
        results = [
            notifier.ready(),
            notifier.reloading(),
            notifier.watchdog(),
            notifier.stopping(),
            notifier.status("x"),
        ]
    assert not notifier.enabled
    assert results == [False] * 5
    assert logs == []


@pytest.mark.parametrize(
    "value",
    ["", "relative/notify.sock", "@", "vsock:2:1234"],
    ids=["empty", "relative", "at", "vsock"],
)
def test_unusable_notify_socket_values_disable_notifications(value: str) -> None:
    """A $NOTIFY_SOCKET that is not an absolute path or an abstract name disables notifying."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": value})
    assert not notifier.enabled
    assert notifier.ready() is False


def test_a_send_that_fails_returns_false_logs_once_and_recovers(tmp_path: Path) -> None:
    """Sending to a socket that is gone returns False and logs once; a later send succeeds."""
    path = tmp_path / "gone.sock"
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    with capture_logs() as logs:
        assert notifier.watchdog() is False
        assert notifier.watchdog() is False
        receiver = _receiver(str(path))
        try:
            assert notifier.watchdog() is True
            assert receiver.recv(4096) == b"WATCHDOG=1"
        finally:
            receiver.close()
            notifier.close()
    assert [e["event"] for e in logs] == ["sd_notify_failed", "sd_notify_recovered"]
    assert logs[0]["log_level"] == "warning"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{pid}"}, 30.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "{pid}"}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({"WATCHDOG_PID": "{pid}"}, None),
    ],
    ids=[
        "usec",
        "our-pid",
        "sub-second",
        "another-pid",
        "unset",
        "zero",
        "negative",
        "garbage",
        "pid-only",
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    """$WATCHDOG_USEC gives the interval in seconds, only when $WATCHDOG_PID is absent or ours."""
    env = {k: v.replace("{pid}", str(os.getpid())) for k, v in env.items()}
    assert Notifier.from_env(env).watchdog_interval() == expected


def test_watchdog_interval_reads_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without an explicit mapping, the watchdog settings come from os.environ."""
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier.from_env().watchdog_interval() == 20.0


def _next_state(sock: socket.socket, prefix: str, deadline: float) -> list[str]:
    """Messages received until one starts with ``prefix`` (WATCHDOG=1 pings left out)."""
    seen: list[str] = []
    while not seen or not seen[-1].startswith(prefix):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            pytest.fail(f"no {prefix} within the deadline; got {seen}")
        if message != "WATCHDOG=1":
            seen.append(message)
    return seen


def test_daemon_notifies_ready_watchdog_reload_and_stop(
    notify_socket: socket.socket, tmp_path: Path
) -> None:
    """``lbhealthd run`` says READY=1 after its first round, then pings the watchdog; SIGHUP
    brings RELOADING=1 then READY=1, SIGTERM brings STOPPING=1 (the LB may be unreachable)."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "daemon:\n"
        f"  state_dir: {tmp_path / 'state'}\n"
        f"  control_socket: {tmp_path / 'run' / 'control.sock'}\n"
        f"  http: 127.0.0.1:{free_port()}\n"
        "  round_interval: 200ms\n"
        "load_balancer:\n"
        f"  haproxy: {{sockets: ['unix:{tmp_path / 'no-haproxy.sock'}']}}\n"
        "pools:\n  - name: api\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "lbhealthd", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        assert _next_state(notify_socket, "READY=1", deadline) == ["READY=1"]
        notify_socket.settimeout(2.0)
        assert notify_socket.recv(4096) == b"WATCHDOG=1"
        proc.send_signal(signal.SIGHUP)
        reload = _next_state(notify_socket, "READY=1", time.monotonic() + 5)
        assert reload[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert reload[-1] == "READY=1"
        proc.send_signal(signal.SIGTERM)
        assert _next_state(notify_socket, "STOPPING=1", time.monotonic() + 5)[-1] == "STOPPING=1"
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


# --- the systemd unit --------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd's unit syntax: sections, ``Key=value`` lines (a key may repeat), ``#``/``;``
    comments, backslash continuations."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {line!r} is outside any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: {line!r} is not Key=value"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, str]:
    """The [Service] section, each key's last value (as systemd applies single-valued keys)."""
    return {k: v[-1] for k, v in parse_unit(UNIT)["Service"].items()}


def test_unit_is_type_notify_with_watchdog_reload_and_restart(service: dict[str, str]) -> None:
    """The unit waits for READY=1, wants watchdog pings, reloads through `lbhealthd reload` on
    the file it runs with (so a refused file fails the reload), restarts on failure."""
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert parse_duration(service["WatchdogSec"] + "s") == 30.0
    start = shlex.split(service["ExecStart"])
    assert shlex.split(service["ExecReload"]) == [start[0], "reload", *start[2:]]
    assert service["Restart"] == "on-failure"
    assert service["RestartSec"] == "2"


def test_unit_reload_is_lbhealthd_reload_of_the_system_config(service: dict[str, str]) -> None:
    """ExecReload is ``lbhealthd reload -c /etc/lbhealthd/config.yaml``, as the CLI parses it."""
    args = build_parser().parse_args(shlex.split(service["ExecReload"])[1:])
    assert args.func is cmd_reload
    assert args.config == "/etc/lbhealthd/config.yaml"


def test_unit_stop_timeout_outlasts_the_round_under_way(service: dict[str, str]) -> None:
    """TimeoutStopSec leaves the daemon time to finish a round bounded by the LB timeout."""
    assert parse_duration(service["TimeoutStopSec"] + "s") > 2 * HAProxyConfig().timeout


def test_unit_runs_the_daemon_with_the_system_config(service: dict[str, str]) -> None:
    """ExecStart is ``lbhealthd run -c /etc/lbhealthd/config.yaml``, as the CLI parses it."""
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "lbhealthd"
    args = build_parser().parse_args(argv[1:])
    assert args.func is cmd_run
    assert args.config == "/etc/lbhealthd/config.yaml"


def test_unit_hardening(service: dict[str, str]) -> None:
    """The unit keeps the hardening settings the design asks for."""
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "UMask": "0027",
        "CapabilityBoundingSet": "",
    }
    assert {k: service.get(k) for k in expected} == expected
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_unit_directories_match_the_config_defaults(service: dict[str, str]) -> None:
    """StateDirectory is daemon.state_dir and RuntimeDirectory holds daemon.control_socket."""
    defaults = DaemonConfig()
    assert "/var/lib/" + service["StateDirectory"] == defaults.state_dir
    assert "/run/" + service["RuntimeDirectory"] == str(Path(defaults.control_socket).parent)
    # The control server makes its socket 0660: the directory lets the group in, no one else.
    assert service["RuntimeDirectoryMode"] == "0750"


def test_unit_gives_the_descriptors_the_daemon_wants(service: dict[str, str]) -> None:
    """LimitNOFILE is what the daemon would raise its soft limit to (it cannot under the unit's
    system call filter), and leaves both listeners their full default connection cap."""
    soft, _, hard = service["LimitNOFILE"].partition(":")
    assert int(soft) == int(hard or soft) == fd_limit.TARGET
    assert fd_limit.listener_cap(int(soft), 2, DaemonConfig().max_connections) == 64
    assert "@resources" in service["SystemCallFilter"]  # hence the limit is set here


def test_unit_user_and_haproxy_group(service: dict[str, str]) -> None:
    """The daemon runs as lbhealthd, with haproxy as a supplementary group for the admin socket."""
    assert service["User"] == "lbhealthd"
    assert service["Group"] == "lbhealthd"
    assert "haproxy" in service["SupplementaryGroups"].split()


def test_connecting_to_a_socket_on_a_read_only_mount_works(tmp_path: Path) -> None:
    """A read-only mount (ProtectSystem=strict) still lets a client connect to a unix socket in it,
    so the unit needs no ReadWritePaths for /run/haproxy."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs root and util-linux unshare/mount to make a private read-only mount")
    script = f"""
import errno, socket, subprocess
d = {str(tmp_path / "ro")!r}
import os; os.mkdir(d)
server = socket.socket(socket.AF_UNIX); server.bind(d + "/admin.sock"); server.listen()
os.chmod(d + "/admin.sock", 0o660)
subprocess.run(["mount", "--bind", d, d], check=True)
subprocess.run(["mount", "-o", "remount,bind,ro", d], check=True)
try:
    open(d + "/x", "w")
except OSError as exc:
    assert exc.errno == errno.EROFS, exc
else:
    raise AssertionError("the mount is writable")
client = socket.socket(socket.AF_UNIX); client.connect(d + "/admin.sock")
print("connected")
"""
    done = subprocess.run(
        ["unshare", "--mount", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0 and "unshare failed" in done.stderr:
        pytest.skip(f"no mount namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "connected"


def _systemd_analyze() -> str:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.skip("systemd-analyze not found; install the systemd package (.ci/run does)")
    return binary


def _unit_copy(tmp_path: Path, replace: tuple[str, str] | None = None) -> Path:
    """The unit with ExecStart and ExecReload pointing at an executable that exists on this
    machine."""
    executable = shutil.which("lbhealthd") or sys.executable
    text = UNIT.read_text()
    for key in ("ExecStart", "ExecReload"):
        text = text.replace(f"{key}=/usr/local/bin/lbhealthd ", f"{key}={executable} ")
    assert executable in text
    if replace is not None:
        assert replace[0] in text
        text = text.replace(*replace)
    copy = tmp_path / "unit" / UNIT.name
    copy.parent.mkdir()
    copy.write_text(text)
    return copy


def _verify(copy: Path) -> list[str]:
    done = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on unknown keys and unparsable values: its complaints are the result.
    complaints = [line for line in done.stderr.splitlines() if copy.name in line]
    if done.returncode != 0:
        complaints.append(f"exit {done.returncode}: {done.stderr.strip()}")
    return complaints


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """``systemd-analyze verify`` finds nothing to complain about in the unit."""
    assert _verify(_unit_copy(tmp_path)) == []


def test_systemd_analyze_verify_would_catch_a_misspelt_key(tmp_path: Path) -> None:
    """The verify check has teeth on this systemd: a misspelt hardening key is reported."""
    copy = _unit_copy(tmp_path, ("ProtectSystem=strict", "ProtectSystm=strict"))
    assert any("ProtectSystm" in line for line in _verify(copy))


def test_systemd_analyze_security_exposure_stays_low(tmp_path: Path) -> None:
    """``systemd-analyze security`` rates the unit's exposure at 2.0 or below (of 10)."""
    done = subprocess.run(
        [
            _systemd_analyze(),
            "security",
            "--offline=yes",
            "--threshold=20",  # tenths: exposure above 2.0 fails
            str(_unit_copy(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    overall = [line for line in done.stdout.splitlines() if "Overall exposure" in line]
    assert done.returncode == 0, overall or done.stderr


# --- the container image -----------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line, pending = pending + stripped, ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    start = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[start:]


def test_image_is_built_on_slim_python_311() -> None:
    """Every stage starts from python:3.11-slim, so the image has the Python the package needs."""
    images = [a.split()[0] for k, a in dockerfile_instructions(DOCKERFILE) if k == "FROM"]
    assert images
    assert all(image.startswith("python:3.11-slim") for image in images), images


def test_image_runs_as_a_numeric_non_root_user() -> None:
    """The final stage switches to a numeric, non-zero uid that it creates."""
    stage = final_stage(dockerfile_instructions(DOCKERFILE))
    users = [a for k, a in stage if k == "USER"]
    assert users, "no USER in the final stage"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) != 0), users[-1]
    created = " ".join(a for k, a in stage if k == "RUN")
    assert f"--uid {uid}" in created


def test_image_entrypoint_runs_the_daemon() -> None:
    """ENTRYPOINT is ``lbhealthd`` and the default command is ``run -c`` the mounted config."""
    stage = final_stage(dockerfile_instructions(DOCKERFILE))
    entrypoint = [json.loads(a) for k, a in stage if k == "ENTRYPOINT"]
    command = [json.loads(a) for k, a in stage if k == "CMD"]
    assert entrypoint == [["lbhealthd"]]
    assert command == [["run", "-c", "/etc/lbhealthd/config.yaml"]]
    args = build_parser().parse_args(command[0])
    assert args.func is cmd_run


def test_image_installs_the_package_without_test_extras() -> None:
    """The image installs lbhealthd with pip, and none of its test dependencies."""
    runs = [a for k, a in dockerfile_instructions(DOCKERFILE) if k == "RUN"]
    assert any("pip install" in r and "lbhealthd" in r for r in runs)
    assert not any("[test]" in r or "pytest" in r for r in runs)


def test_image_label_version_matches_the_package() -> None:
    """The image's version label is the version in pyproject.toml."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    labels = " ".join(a for k, a in dockerfile_instructions(DOCKERFILE) if k == "LABEL")
    assert f'org.opencontainers.image.version="{version}"' in labels


def test_image_exposes_the_http_port_of_the_config() -> None:
    """EXPOSE names daemon.http's default port."""
    exposed = [a for k, a in dockerfile_instructions(DOCKERFILE) if k == "EXPOSE"]
    assert exposed == [DaemonConfig().http.rpartition(":")[2]]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (last match wins)."""
    ignored = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(p, pattern[3:]) for p in parts)
        else:
            hit = any(
                fnmatch.fnmatch("/".join(parts[:n]), pattern) for n in range(1, len(parts) + 1)
            )
        if hit:
            ignored = not negate
    return ignored


def test_build_context_holds_what_copy_needs_and_nothing_else() -> None:
    """Every COPY source is in the build context; tests, .git and virtualenvs are not."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    sources: list[str] = []
    for keyword, args in dockerfile_instructions(DOCKERFILE):
        words = args.split()
        if keyword == "COPY" and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[:-1] if not w.startswith("--")]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _ignored(source, patterns), f"{source} is excluded by .dockerignore"
    assert not _ignored("lbhealthd/daemon/sdnotify.py", patterns)
    for unwanted in ("tests/test_packaging.py", ".git/HEAD", ".venv/bin/python", "bench"):
        assert _ignored(unwanted, patterns), unwanted
    assert _ignored("lbhealthd/__pycache__/cli.cpython-311.pyc", patterns)


# --- the Kubernetes manifests ------------------------------------------------------------


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    document: dict[str, Any] = found[0]
    return document


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in pod["containers"] if c["name"] == name]
    assert len(found) == 1, name
    container: dict[str, Any] = found[0]
    return container


def _probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    """The number of a probe's port, resolving a named container port."""
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert numbers, f"no container port named {port}"
    return int(numbers[0])


@pytest.fixture(scope="module")
def sidecar() -> list[dict[str, Any]]:
    return _documents(SIDECAR)


@pytest.fixture(scope="module")
def sidecar_pod() -> dict[str, Any]:
    return _pod_of(SIDECAR)


@pytest.fixture(scope="module")
def lbhealthd_config_text(sidecar: list[dict[str, Any]]) -> str:
    text: str = _one(sidecar, "ConfigMap", "api-lb-lbhealthd")["data"]["config.yaml"]
    return text


@pytest.fixture(scope="module")
def haproxy_cfg(sidecar: list[dict[str, Any]]) -> str:
    text: str = _one(sidecar, "ConfigMap", "api-lb-haproxy")["data"]["haproxy.cfg"]
    return text


def test_sidecar_pod_has_haproxy_and_lbhealthd(sidecar_pod: dict[str, Any]) -> None:
    """The pod runs HAProxy and lbhealthd side by side."""
    assert {c["name"] for c in sidecar_pod["containers"]} == {"haproxy", "lbhealthd"}
    assert _container(sidecar_pod, "haproxy")["image"].startswith("haproxy:2.6")
    args = build_parser().parse_args(_container(sidecar_pod, "lbhealthd")["args"])
    assert args.func is cmd_run


def test_admin_socket_is_shared_through_an_emptydir(
    sidecar_pod: dict[str, Any], haproxy_cfg: str, lbhealthd_config_text: str, tmp_path: Path
) -> None:
    """HAProxy's admin socket lives in an emptyDir mounted at the same path in both containers,
    the path lbhealthd's config connects to."""
    empty_dirs = {v["name"] for v in sidecar_pod["volumes"] if "emptyDir" in v}
    mounts = {
        c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        for c in sidecar_pod["containers"]
    }
    shared = {
        name
        for name in empty_dirs
        if name in mounts["haproxy"] and mounts["haproxy"][name] == mounts["lbhealthd"].get(name)
    }
    assert len(shared) == 1, shared
    directory = mounts["haproxy"][shared.pop()]
    stats = re.search(r"^\s*stats socket (\S+) (.*)$", haproxy_cfg, re.MULTILINE)
    assert stats is not None
    assert str(Path(stats.group(1)).parent) == directory
    assert "level admin" in stats.group(2) and "mode 660" in stats.group(2)
    (tmp_path / "config.yaml").write_text(lbhealthd_config_text)
    config = load_config(str(tmp_path / "config.yaml"))
    assert config.load_balancer.haproxy.sockets == [f"unix:{stats.group(1)}"]


def test_lbhealthd_is_probed_on_healthz_and_listens_where_the_kubelet_reaches(
    sidecar_pod: dict[str, Any], lbhealthd_config_text: str, tmp_path: Path
) -> None:
    """Startup and liveness probes hit /healthz on daemon.http's port, bound beyond loopback."""
    container = _container(sidecar_pod, "lbhealthd")
    (tmp_path / "config.yaml").write_text(lbhealthd_config_text)
    host, _, port = load_config(str(tmp_path / "config.yaml")).daemon.http.rpartition(":")
    assert host in ("0.0.0.0", "::", "[::]"), "the kubelet probes the pod IP, not loopback"
    for kind in ("startupProbe", "livenessProbe"):
        probe = container[kind]
        assert probe["httpGet"]["path"] == "/healthz", kind
        assert _probe_port(container, probe) == int(port), kind


def test_lbhealthd_readiness_never_takes_haproxy_out_of_service(
    sidecar_pod: dict[str, Any],
) -> None:
    """lbhealthd has no readiness probe (a stalled checker on every replica would otherwise
    empty the Service); HAProxy has its own readiness and liveness probes."""
    assert "readinessProbe" not in _container(sidecar_pod, "lbhealthd")
    haproxy = _container(sidecar_pod, "haproxy")
    for kind in ("readinessProbe", "livenessProbe"):
        assert haproxy[kind]["httpGet"]["path"] == "/healthz", kind


def test_haproxy_serves_the_probe_path_it_is_given(
    sidecar_pod: dict[str, Any], haproxy_cfg: str
) -> None:
    """HAProxy's probes hit a frontend whose monitor-uri is the probe path."""
    haproxy = _container(sidecar_pod, "haproxy")
    port = _probe_port(haproxy, haproxy["readinessProbe"])
    frontend = re.search(
        rf"frontend \S+\n\s+bind :{port}\n\s+monitor-uri (\S+)", haproxy_cfg, re.MULTILINE
    )
    assert frontend is not None
    assert frontend.group(1) == haproxy["readinessProbe"]["httpGet"]["path"]


def test_sidecar_containers_are_locked_down(sidecar_pod: dict[str, Any]) -> None:
    """The pod runs as non-root with numeric uids, read-only root file systems, no escalation."""
    assert sidecar_pod["securityContext"]["runAsNonRoot"] is True
    for container in sidecar_pod["containers"]:
        ctx = container["securityContext"]
        assert isinstance(ctx["runAsUser"], int) and ctx["runAsUser"] != 0, container["name"]
        assert ctx["readOnlyRootFilesystem"] is True, container["name"]
        assert ctx["allowPrivilegeEscalation"] is False, container["name"]
        assert ctx["capabilities"]["drop"] == ["ALL"], container["name"]
        assert "memory" in container["resources"]["limits"], container["name"]


def test_lbhealthd_writable_paths_are_volumes(
    sidecar_pod: dict[str, Any], lbhealthd_config_text: str, tmp_path: Path
) -> None:
    """With a read-only root, state_dir is a directory of its own in a mounted volume (an
    emptyDir is writable by every user, which the daemon refuses as a state_dir) and the
    control socket's directory a subdirectory of one (refused too as the socket's directory:
    the daemon creates its own 0750 inside); the config file is the ConfigMap's mounted at the
    path of ``-c``."""
    container = _container(sidecar_pod, "lbhealthd")
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    (tmp_path / "config.yaml").write_text(lbhealthd_config_text)
    daemon = load_config(str(tmp_path / "config.yaml")).daemon
    state_mount = str(Path(daemon.state_dir).parent)
    assert state_mount in mounts and not mounts[state_mount].get("readOnly")
    socket_dir = Path(daemon.control_socket).parent
    assert str(socket_dir) not in mounts
    assert str(socket_dir.parent) in mounts and not mounts[str(socket_dir.parent)].get("readOnly")
    config_path = build_parser().parse_args(container["args"]).config
    config_mount = mounts[str(Path(config_path).parent)]
    volume = next(v for v in sidecar_pod["volumes"] if v["name"] == config_mount["name"])
    assert volume["configMap"]["name"] == "api-lb-lbhealthd"


def _open_state(state: Path) -> str:
    Store.open(state).append_action(event="started")
    return "started"


@needs_root
def test_sidecar_state_dir_is_accepted_in_an_emptydir(
    sidecar_pod: dict[str, Any], lbhealthd_config_text: str, tmp_path: Path
) -> None:
    """An emptyDir with fsGroup is mode 2777, owned by root and the group: refused as a
    state_dir, while the manifest's state_dir, a directory the daemon makes in it, is used."""
    (tmp_path / "config.yaml").write_text(lbhealthd_config_text)
    state_dir = Path(load_config(str(tmp_path / "config.yaml")).daemon.state_dir)
    uid = _container(sidecar_pod, "lbhealthd")["securityContext"]["runAsUser"]
    assert sidecar_pod["securityContext"]["fsGroup"] == uid
    with shared_dir() as shared:
        volume = shared / "volume"
        volume.mkdir()
        os.chown(volume, 0, uid)
        os.chmod(volume, 0o2777)
        got = in_child(_open_state, volume, uid=uid)
        assert got.startswith("StateError: ") and "writable by every user" in got, got
        assert in_child(_open_state, volume / state_dir.name, uid=uid) == "ok: started"


def test_haproxy_config_in_the_manifest_is_valid(haproxy_cfg: str, tmp_path: Path) -> None:
    """The manifest's haproxy.cfg passes HAProxy's own check (``haproxy -c``) without warnings."""
    binary = find_haproxy()
    if binary is None:
        pytest.skip("haproxy binary not found in PATH or /usr/sbin; install the haproxy package")
    (tmp_path / "haproxy.cfg").write_text(haproxy_cfg)
    done = subprocess.run(
        [binary, "-c", "-f", str(tmp_path / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout + done.stderr, done.stdout + done.stderr


def _pod_of(path: Path) -> dict[str, Any]:
    pod: dict[str, Any] = _one(_documents(path), "Deployment")["spec"]["template"]["spec"]
    return pod


@pytest.fixture(scope="module")
def agent_pod() -> dict[str, Any]:
    return _pod_of(AGENT)


def _agent_args(pod: dict[str, Any]) -> dict[str, str]:
    args = _container(pod, "lbhealthd-agent")["args"]
    assert args[0] == "agent"
    flags = args[1:]
    return dict(zip(flags[::2], flags[1::2], strict=True))


def test_agent_sidecar_listens_on_the_pod_ip(agent_pod: dict[str, Any]) -> None:
    """The agent runs beside the API server with its HTTP and agent-check ports on the pod IP."""
    assert {c["name"] for c in agent_pod["containers"]} == {"api", "lbhealthd-agent"}
    flags = _agent_args(agent_pod)
    assert flags["--listen"] == "0.0.0.0:9111"
    assert flags["--agent-port"] == "9112"
    assert flags["--agent-bind"] == "0.0.0.0"
    ports = {p["containerPort"] for p in _container(agent_pod, "lbhealthd-agent")["ports"]}
    assert ports == {9111, 9112}


def test_agent_flags_are_the_cli_s() -> None:
    """The manifest's agent arguments are accepted by ``lbhealthd agent``."""
    parser = build_parser()
    # argparse offers no public way to list subcommands; its subparsers action holds them.
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "agent" not in sub.choices:
        pytest.skip("`lbhealthd agent` is not in the CLI yet")
    parser.parse_args(_container(_pod_of(AGENT), "lbhealthd-agent")["args"])


def test_agent_probes_and_no_readiness(agent_pod: dict[str, Any]) -> None:
    """The agent's startup and liveness probes hit its /health on --listen's port; it has no
    readiness probe, so a failing agent cannot pull its API server out of the pool by itself."""
    container = _container(agent_pod, "lbhealthd-agent")
    port = int(_agent_args(agent_pod)["--listen"].rpartition(":")[2])
    for kind in ("startupProbe", "livenessProbe"):
        assert container[kind]["httpGet"]["path"] == "/health", kind
        assert _probe_port(container, container[kind]) == port, kind
    assert "readinessProbe" not in container
    api = _container(agent_pod, "api")
    assert "readinessProbe" in api and "livenessProbe" in api
    assert _pod_of(AGENT)["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


class _IdleLoad:
    def read(self) -> Load:
        return Load(cpu=0.1)


async def test_agent_answers_the_probe_path_of_the_manifest(agent_pod: dict[str, Any]) -> None:
    """The path the manifest probes is one the agent serves (200)."""
    path = _container(agent_pod, "lbhealthd-agent")["livenessProbe"]["httpGet"]["path"]
    async with (
        Agent("127.0.0.1:0", source=_IdleLoad()) as agent,
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{agent.http_port}{path}") as response,
    ):
        assert response.status == 200


def test_manifests_agree_on_the_agent_ports(
    agent_pod: dict[str, Any], haproxy_cfg: str, lbhealthd_config_text: str, tmp_path: Path
) -> None:
    """HAProxy's agent-port and lbhealthd's probe URL point at the ports the agent listens on."""
    flags = _agent_args(agent_pod)
    assert f"agent-port {flags['--agent-port']}" in haproxy_cfg
    (tmp_path / "config.yaml").write_text(lbhealthd_config_text)
    (pool,) = load_config(str(tmp_path / "config.yaml")).pools
    assert pool.probe.url == f"http://{{address}}:{flags['--listen'].rpartition(':')[2]}/health"
    service = _one(_documents(AGENT), "Service", "api")
    assert service["spec"]["clusterIP"] == "None"
    assert "api.default.svc.cluster.local" in haproxy_cfg
