"""Run a real HAProxy as a child process, for integration tests and ``lbhealthd demo``.

``HAProxyProcess`` writes a configuration into a directory of its own, checks it with
``haproxy -c``, starts ``haproxy -db`` in the foreground (never the system service, never a
shell) and waits until the admin socket answers ``show info`` with the child's own PID.
``stop()`` signals exactly that PID: SIGTERM, then SIGKILL after a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from lbhealthd.model import check_name

_SBIN_HAPROXY = "/usr/sbin/haproxy"


def find_haproxy() -> str | None:
    """Return the path of the haproxy binary, or None when it is not installed."""
    found = shutil.which("haproxy")
    if found:
        return found
    if os.access(_SBIN_HAPROXY, os.X_OK):
        return _SBIN_HAPROXY
    return None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _check_token(value: str, what: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"invalid {what} {value!r}: must be non-empty without whitespace")
    return value


def _check_line(value: str, what: str) -> str:
    if "\n" in value or "\r" in value or "#" in value:
        raise ValueError(f"invalid {what} {value!r}: must be one line without '#'")
    return value


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One ``server`` line: name, address, weight, extra keywords (``check``, ``agent-check``)."""

    name: str
    host: str
    port: int
    weight: int = 1
    extra: str = ""

    def line(self) -> str:
        check_name(self.name, "server name")
        _check_token(self.host, "host")
        _check_line(self.extra, "server keywords")
        if not 0 < self.port < 65536 or not 0 <= self.weight <= 256:
            raise ValueError(f"server {self.name}: bad port {self.port} or weight {self.weight}")
        words = [f"server {self.name} {self.host}:{self.port} weight {self.weight}", self.extra]
        return " ".join(w for w in words if w)


ServerLike = ServerSpec | tuple[str, str, int, int, str] | tuple[str, str, int, int]


def _as_spec(server: ServerLike) -> ServerSpec:
    return server if isinstance(server, ServerSpec) else ServerSpec(*server)


class HAProxyProcess:
    """One HAProxy child process with a unix admin socket (and optionally a TCP one).

    ``backends`` maps a backend name to its servers; ``backend_options`` adds lines to a
    backend (``option httpchk GET /health`` ...). The first backend is the frontend's default.
    """

    def __init__(
        self,
        workdir: Path | str,
        backends: Mapping[str, Sequence[ServerLike]],
        *,
        frontend_port: int | None = None,
        tcp_socket_port: int | None = None,
        backend_options: Mapping[str, Sequence[str]] | None = None,
        binary: str | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        if not backends:
            raise ValueError("at least one backend is needed")
        self.workdir = Path(workdir)
        self.backends = {
            check_name(n, "backend name"): [_as_spec(s) for s in servers]
            for n, servers in backends.items()
        }
        self.backend_options = {k: list(v) for k, v in (backend_options or {}).items()}
        self.frontend_port = frontend_port if frontend_port is not None else free_port()
        self.tcp_socket_port = tcp_socket_port
        self.binary = binary or find_haproxy()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.socket_path = self.workdir / "admin.sock"
        self.config_path = self.workdir / "haproxy.cfg"
        self.log_path = self.workdir / "haproxy.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def socket(self) -> str:
        """The admin socket in the driver's notation: ``unix:PATH``."""
        return f"unix:{self.socket_path}"

    @property
    def tcp_socket(self) -> str | None:
        """The TCP admin socket (``tcp:127.0.0.1:PORT``), when one was asked for."""
        if self.tcp_socket_port is None:
            return None
        return f"tcp:127.0.0.1:{self.tcp_socket_port}"

    @property
    def pid(self) -> int | None:
        """The PID of the running child, or None."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def config_text(self) -> str:
        """Render haproxy.cfg."""
        lines = [
            "global",
            f"    stats socket {self.socket_path} mode 600 level admin",
        ]
        if self.tcp_socket_port is not None:
            lines.append(f"    stats socket ipv4@127.0.0.1:{self.tcp_socket_port} level admin")
        lines += [
            "    stats timeout 30s",
            "defaults",
            "    mode http",
            "    timeout connect 2s",
            "    timeout client 10s",
            "    timeout server 10s",
            "    timeout queue 5s",
            "    timeout check 2s",
            "frontend fe",
            f"    bind 127.0.0.1:{self.frontend_port}",
            f"    default_backend {next(iter(self.backends))}",
        ]
        for name, servers in self.backends.items():
            lines += [f"backend {name}", "    balance roundrobin"]
            lines += [
                f"    {_check_line(o, 'backend option')}"
                for o in self.backend_options.get(name, ())
            ]
            lines += [f"    {s.line()}" for s in servers]
        return "\n".join(lines) + "\n"

    def _binary(self) -> str:
        if self.binary is None:
            raise FileNotFoundError("haproxy binary not found (looked in PATH and /usr/sbin)")
        return self.binary

    async def check(self) -> None:
        """Write the configuration and validate it with ``haproxy -c``; RuntimeError if refused."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        args = [self._binary(), "-c", "-q", "-f", str(self.config_path)]
        done = await asyncio.to_thread(subprocess.run, args, capture_output=True, timeout=30)
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace").strip()
            raise RuntimeError(f"haproxy refused {self.config_path}: {out}")

    async def start(self) -> None:
        """Check the configuration, start HAProxy and wait until its admin socket answers."""
        if self.pid is not None:
            raise RuntimeError(f"haproxy already running (pid {self.pid})")
        await self.check()
        await self._spawn([])

    async def reload(self) -> subprocess.Popen[bytes]:
        """Start a new process that takes over the sockets and soft-stops the old one (``-sf``).

        Returns once the admin socket answers with the new PID; the old process is returned
        (still finishing its soft stop, it exits once its last connection is closed) and the
        caller reaps it.
        """
        old = self._proc
        if old is None or old.poll() is not None:
            raise RuntimeError("haproxy is not running")
        await self.check()
        log = self._log
        self._log = None
        try:
            await self._spawn(["-sf", str(old.pid)])
        except BaseException:
            self._proc = old  # the new one failed: the old process goes on serving
            raise
        finally:
            if log is not None:
                log.close()
        return old

    async def _spawn(self, extra: list[str]) -> None:
        self._log = self.log_path.open("ab")
        self._proc = await asyncio.to_thread(
            subprocess.Popen,
            [self._binary(), "-db", "-f", str(self.config_path), *extra],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        try:
            async with asyncio.timeout(self.start_timeout):
                while not await self._answers_show_info(self._proc.pid):
                    if self._proc.poll() is not None:
                        raise RuntimeError(
                            f"haproxy exited with {self._proc.returncode}: {self.log_tail()}"
                        )
                    await asyncio.sleep(0.02)
        except BaseException:
            await self.stop()
            raise

    async def _answers_show_info(self, pid: int) -> bool:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError:
            return False
        try:
            writer.write(b"show info\n")
            await writer.drain()
            reply = (await reader.read()).decode(errors="replace")
        except OSError:
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return f"\nPid: {pid}\n" in reply

    async def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after ``stop_timeout``) and reap it."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                if not await wait_exit(proc, self.stop_timeout):
                    proc.kill()
                    await wait_exit(proc, self.stop_timeout)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    async def restart(self) -> None:
        """Stop and start again with the same configuration: runtime state is lost."""
        await self.stop()
        await self.start()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines HAProxy printed."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def __aenter__(self) -> HAProxyProcess:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def wait_exit(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    """Wait up to ``seconds`` for ``proc`` to exit (reaping it); True if it did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while proc.poll() is None:
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True
