"""The whole-file state documents, ``{"version": 1, "<key>": ...}``: reading them with every
check, replacing them atomically, and the error that names a damaged one.

A document is written to a temp file in the same directory, flushed and fsynced, then
``os.replace``-d over the old file, and the directory is fsynced: a crash leaves the old or the
new file, never a mix. A temp file a crash left behind is recognised by its name and removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

from lbhealthd.errors import StateError
from lbhealthd.store.files import (
    MAX_DOCUMENT,
    StateDir,
    create_new,
    open_file,
    os_text,
    read_at_most,
    read_error,
    write_all,
    write_error,
)

FORMAT_VERSION = 1

OVERRIDES = "overrides.json"
OWNED = "owned.json"
ENGINE = "engine.json"

_TEMP_NAME = re.compile(
    r"\.(" + "|".join(re.escape(n) for n in (OVERRIDES, OWNED, ENGINE)) + r")\.[0-9a-f]+\.tmp"
)

# What moving each file aside costs, so the operator can weigh it before doing so.
_ASIDE_COST = {
    OVERRIDES: "every manual override is then forgotten",
    OWNED: "the daemon then forgets which LB changes it made and leaves them to an operator",
    ENGINE: "flap counters and similar engine memory are then reset",
}


def read_document(d: StateDir, name: str, key: str, kind: type[Any]) -> Any:
    """The checked ``key`` member of the versioned document ``name``, or None when missing."""
    path = d.path / name
    try:
        fd, _ = open_file(d, name, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise read_error(path, exc) from exc
    try:
        size = os.fstat(fd).st_size
        raw = read_at_most(fd, MAX_DOCUMENT)
    except OSError as exc:
        raise read_error(path, exc) from exc
    finally:
        os.close(fd)
    if raw is None:
        raise corrupt(
            path,
            f"{size} bytes, more than the {MAX_DOCUMENT} bytes a state file may hold "
            f"(lbhealthd writes far less)",
        )
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise corrupt(path, f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise corrupt(path, f"the document is a {kind_of(doc)}, not an object")
    version = doc.get("version")
    if type(version) is not int:
        raise corrupt(path, f"no integer 'version' (found {version!r})")
    if version != FORMAT_VERSION:
        raise corrupt(
            path, f"format version {version} is not the supported version {FORMAT_VERSION}"
        )
    extra = sorted(set(doc) - {"version", key})
    if extra:
        raise corrupt(path, f"unknown keys {extra}")
    if key not in doc:
        raise corrupt(path, f"no {key!r} member")
    value = doc[key]
    if not isinstance(value, kind):
        raise corrupt(path, f"{key!r} is a {kind_of(value)}, not a {kind_of(kind())}")
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number lbhealthd writes")


def write_document(d: StateDir, filename: str, key: str, value: object) -> None:
    """Atomically replace ``filename`` with a versioned document; hold the writers' lock."""
    data = json.dumps({"version": FORMAT_VERSION, key: value}, indent=1, allow_nan=False).encode()
    data += b"\n"
    path = d.path / filename
    if len(data) > MAX_DOCUMENT:
        raise StateError(
            f"{path}: not written: it would be {len(data)} bytes, more than the "
            f"{MAX_DOCUMENT} bytes a state file may hold, so lbhealthd could not read it "
            f"back. The previous version is unchanged."
        )
    temp = f".{filename}.{secrets.token_hex(6)}.tmp"
    try:
        fd = create_new(d, temp, os.O_WRONLY)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, filename, src_dir_fd=d.fd, dst_dir_fd=d.fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=d.fd)
        raise write_error(path, "write it", exc) from exc
    try:
        os.fsync(d.fd)
    except OSError as exc:
        text = os_text(exc)
        raise StateError(
            f"{path}: written, but the directory fsync failed: {text}; the new version may "
            f"not survive a power loss. Check the file system of {d.path}."
        ) from exc


def clean_temp_files(d: StateDir) -> None:
    """Remove temp files a crashed writer left; only call it holding the writers' lock."""
    for name in os.listdir(d.fd):
        if _TEMP_NAME.fullmatch(name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=d.fd)


def corrupt(path: Path, problem: str) -> StateError:
    """The error for a damaged state file: what is wrong, and what the operator can do."""
    cost = _ASIDE_COST.get(path.name, "its contents are then lost")
    return StateError(
        f"{path}: {problem}. lbhealthd will not run over a damaged state file, since silently "
        f"dropping an operator's decision is worse than not starting. Inspect it and fix it, "
        f"or move it aside (mv {path} {path}.bad; {cost}), then start again."
    )


def kind_of(value: object) -> str:
    """What JSON calls the type of ``value``: object, list, string, number..."""
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number" if isinstance(value, int | float) else "value")
