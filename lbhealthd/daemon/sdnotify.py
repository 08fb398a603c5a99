"""The systemd notify protocol (``sd_notify(3)``), standard library only.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``: a unix datagram socket, either a path
(``/run/systemd/notify``) or a name in the abstract namespace (``@name``). The service sends it
newline-separated ``KEY=VALUE`` assignments, one datagram per message:

    READY=1                         start-up is complete (lbhealthd: after its first full round)
    RELOADING=1 + MONOTONIC_USEC=…  a reload began; READY=1 again when it is over
    STOPPING=1                      shutdown began
    WATCHDOG=1                      still alive; must come within ``$WATCHDOG_USEC`` (WatchdogSec)
    STATUS=…                        one line shown by ``systemctl status``

Nothing here ever raises because systemd is absent or unwell: without ``$NOTIFY_SOCKET`` every
call is a no-op returning False, and a failed send is logged once and returns False. The daemon
must keep balancing traffic whether or not anybody listens.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("lbhealthd.daemon.sdnotify")

# A send blocks at most this long: the receiver is PID 1, which reads promptly unless the host
# is in trouble, and the daemon's event loop must not stall behind it.
SEND_TIMEOUT = 0.5


def _address(value: str) -> str | None:
    """``$NOTIFY_SOCKET`` → an AF_UNIX address, or None if it is not one we can use."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # the abstract namespace: a leading NUL, no file
    return None  # empty, relative, or another transport (vsock:…): not supported


class Notifier:
    """Sends notify messages to one socket; a Notifier without an address does nothing."""

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: int | None = None,
        timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.address = address
        self._watchdog_usec = watchdog_usec
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID`` (from ``os.environ``
        unless ``environ`` is given)."""
        env = os.environ if environ is None else environ
        address = _address(env.get("NOTIFY_SOCKET", ""))
        return cls(address, watchdog_usec=_watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to send to (whether anyone listens is known only by trying)."""
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds, or None when no watchdog applies to this process.

        Ping (``watchdog()``) at least twice per interval, as sd_watchdog_enabled(3) advises.
        """
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 1_000_000

    def notify(self, state: str) -> bool:
        """Send ``state`` (one or more ``KEY=VALUE`` lines) in one datagram; True if it was sent."""
        address = self.address
        if address is None:
            return False
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.settimeout(self._timeout)
                self._sock = sock
            # sendto, not connect: a systemd re-exec binds the socket afresh under the same name.
            self._sock.sendto(state.encode("utf-8", "replace"), address)
        except OSError as exc:
            if not self._failing:
                log.warning(
                    "sd_notify_failed",
                    socket=address.replace("\0", "@"),
                    error=str(exc),
                    note="keeps running; systemd may not see readiness or watchdog pings",
                )
            self._failing = True
            return False
        if self._failing:
            log.info("sd_notify_recovered", socket=address.replace("\0", "@"))
            self._failing = False
        return True

    def ready(self) -> bool:
        """Start-up (or a reload) is complete."""
        return self.notify("READY=1")

    def reloading(self) -> bool:
        """A reload began. MONOTONIC_USEC is what ``Type=notify-reload`` (systemd ≥ 253) checks
        against its own clock; older versions ignore it. Send ``ready()`` when it is over."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """Shutdown began."""
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        """The daemon is alive and its rounds are completing."""
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """A one-line status for ``systemctl status`` (line breaks become spaces)."""
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """``$WATCHDOG_USEC`` as a positive integer, if it is meant for this process."""
    pid = env.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None  # set for another process (we were forked or exec'd by the service's main)
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None
