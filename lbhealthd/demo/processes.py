"""Child processes of the demo, each stopped by its own PID and never left behind."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path
from typing import IO

CONFIG_NAME = "lbhealthd-demo.yaml"


class ChildProcess:
    """A child started with asyncio, stopped by its PID: SIGTERM, then SIGKILL after a deadline."""

    def __init__(self, args: list[str], stderr: Path | None = None) -> None:
        self.args = args
        self.stderr_path = stderr
        self.proc: asyncio.subprocess.Process | None = None
        self._err: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        if self.stderr_path is not None:
            self._err = self.stderr_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=self._err if self._err is not None else asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    async def stop(self, deadline: float = 5.0) -> int | None:
        proc = self.proc
        try:
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), deadline)
                except TimeoutError:
                    proc.kill()
                    await asyncio.wait_for(proc.wait(), deadline)
            return proc.returncode if proc is not None else None
        finally:
            if self._err is not None:
                self._err.close()
                self._err = None


async def run_command(args: list[str], deadline: float) -> tuple[int | None, str, int]:
    """Run a command to completion (killed by PID after ``deadline`` s): exit, output, PID."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), deadline)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None, f"timed out after {deadline:g}s and was killed", proc.pid
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(errors="replace"), proc.pid


def prepare_out(out: Path) -> None:
    """Use ``out`` if it is new, empty or a previous demo's; refuse anything else."""
    if out.exists() and any(out.iterdir()):
        if not (out / CONFIG_NAME).exists():
            raise FileExistsError(
                f"{out} is not empty and holds no previous demo: choose a new or empty directory"
            )
        for name in ("state", "haproxy"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("daemon.log", "summary.json", "demo.png", "control.sock"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
