"""`lbhealthd audit`: the live pool against the config, or a candidate haproxy.cfg before it is
deployed. Exit 0 clean, 1 drift, 2 could not check.

`--fix` sets runtime weights back to ``expected_weights`` (never on a server whose weight
lbhealthd itself is ramping, and never to or from weight 0, which would restore or make a drain
past the caps: those are skipped and said so); it asks first unless `--yes`, and logs each
change in the action log. A runtime weight is lost when HAProxy reloads: the file must be fixed
too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lbhealthd.config import Config
from lbhealthd.drivers import make_driver
from lbhealthd.drivers.haproxy.config_file import (
    CfgServer,
    audit_cfg,
    check_candidate,
    parse_backends,
    read_candidate,
)
from lbhealthd.errors import DriverError, LbhealthdError, UnsafeConfig
from lbhealthd.model import Member, ServerId
from lbhealthd.monitors.audit import Finding, FindingKind, audit_pair, sort_findings
from lbhealthd.oncall.commands import Outcome
from lbhealthd.oncall.direct import open_driver
from lbhealthd.pool_audit import expectation, live_findings
from lbhealthd.server_set import Rename, address_of, renames
from lbhealthd.store import OwnedEntry, Store
from lbhealthd.store.memory import DISCOVERED, Addresses, Sets, recorded_sets
from lbhealthd.writer import LbWriter, Why
from lbhealthd.writer.journal import Journal


def _doc(findings: list[Finding], **extra: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "clean": not findings,
        "findings": [dataclasses.asdict(f) | {"kind": f.kind.value} for f in findings],
        **extra,
    }


def _lines(findings: list[Finding], header: str) -> list[str]:
    if not findings:
        return [f"{header}: clean"]
    return [f"{header}: {len(findings)} difference(s)"] + [
        f"  {f.kind.value:<19} {f.message}" for f in findings
    ]


def _state(config: Config) -> tuple[dict[ServerId, OwnedEntry], dict[str, list[str]]]:
    owned, recorded, _ = _memory(config)
    return owned, recorded


def _memory(config: Config) -> tuple[dict[ServerId, OwnedEntry], Sets, Addresses]:
    """What lbhealthd owns, and the recorded server sets with their addresses."""
    try:
        store = Store(config.daemon.state_dir)
        owned = store.load_owned()
        recorded, addresses = recorded_sets(store.load_blob(DISCOVERED))
    except (LbhealthdError, OSError):
        return {}, {}, {}
    return owned, recorded, addresses


def _renamed(findings: list[Finding], gone_at: Addresses, new_at: Addresses) -> list[Rename]:
    """Renames among the missing and unexpected servers of ``findings``; ``gone_at`` and
    ``new_at`` give the addresses of the expected and the present servers by pool."""
    found = []
    missing, unexpected = FindingKind.MISSING_SERVER, FindingKind.UNEXPECTED_SERVER
    for pool in sorted({f.pool for f in findings}):
        named = [(f.kind, str(f.server)) for f in findings if f.pool == pool and f.server]
        gone = {s: gone_at.get(pool, {}).get(s) for k, s in named if k is missing}
        new = {s: new_at.get(pool, {}).get(s, "") for k, s in named if k is unexpected}
        found += renames(pool, gone, new)
    return found


def _rename_lines(found: list[Rename]) -> list[str]:
    lines = [f"  {'renamed' if r.sure else 'renamed?':<19} {r.message()}" for r in found]
    for pool in sorted({r.pool for r in found}):
        lines.append(
            f"  if intended: lbhealthd audit --accept {pool} --reason TEXT (records the live "
            f"set), then lbhealthd forget {pool}/OLD --reason TEXT for each old name"
        )
    return lines


async def _read(
    config: Config,
) -> tuple[dict[str, dict[ServerId, Member]], list[Finding], dict[str, str]]:
    lb = config.load_balancer
    members: dict[str, dict[ServerId, Member]] = {}
    errors: dict[str, str] = {}
    pair: list[Finding] = []
    driver = open_driver(config)
    singles = (
        [make_driver(config, sockets=[s]) for s in lb.haproxy.sockets]
        if len(lb.haproxy.sockets) > 1
        else []
    )
    try:
        for pool in config.pools:
            try:
                snap = await driver.snapshot(pool.name)
            except DriverError as exc:
                errors[pool.name] = str(exc)
                continue
            members[pool.name] = {m.id: m for m in snap.members}
            views: dict[str, list[Member]] = {}
            for socket_name, single in zip(lb.haproxy.sockets, singles, strict=False):
                try:
                    views[socket_name] = list((await single.snapshot(pool.name)).members)
                except DriverError as exc:
                    errors[f"{pool.name}@{socket_name}"] = str(exc)
            if len(views) > 1:
                pair += audit_pair(views)
    finally:
        await driver.close()
        for single in singles:
            await single.close()
    return members, pair, errors


def _findings(
    config: Config, members: dict[str, dict[ServerId, Member]], pair: list[Finding]
) -> list[Finding]:
    owned, recorded = _state(config)
    findings = list(pair)
    for pool in config.pools:
        if pool.name in members:
            mine = [sid for sid in owned if sid.pool == pool.name]
            found = live_findings(pool, members[pool.name], mine, recorded.get(pool.name))
            if pair:  # the per-endpoint comparison already says which endpoint differs
                found = [f for f in found if f.kind is not FindingKind.ENDPOINTS_DISAGREE]
            findings += found
    return sort_findings(findings)


async def live(config: Config, *, fix: bool, yes: bool, confirm: Callable[[str], bool]) -> Outcome:
    members, pair, errors = await _read(config)
    lines = [f"cannot read {where}: {error}" for where, error in errors.items()]
    if not members:
        return Outcome(
            2, tuple(lines or ["nothing could be read"]), _doc([], clean=None, errors=errors)
        )
    findings = _findings(config, members, pair)
    lines += _lines(findings, "live pool")
    live_at = {p: {s.server: address_of(m) for s, m in ms.items()} for p, ms in members.items()}
    renamed = _renamed(findings, _memory(config)[2], live_at)
    lines += _rename_lines(renamed)
    fixed: list[str] = []
    skipped: list[dict[str, Any]] = []
    if fix:
        plan, skipped = _fix_plan(config, members, findings)
        lines += [f"  skipped: {s['server']}: {s['reason']}" for s in skipped]
        if not plan:
            lines.append("--fix: no weight to set back")
        elif not yes and not confirm(
            f"set {len(plan)} weight(s) back: "
            + ", ".join(f"{sid} {w}" for sid, w, _ in plan)
            + "? [y/N] "
        ):
            return Outcome(
                2,
                (*lines, "--fix: not confirmed; nothing changed"),
                _doc(findings, errors=errors, skipped=skipped),
            )
        else:
            fixed = await _apply(config, members, plan)
            lines += [f"  fixed: {f}" for f in fixed]
            lines.append(
                "--fix changed runtime weights only: fix the HAProxy configuration "
                "file too, or the next reload brings the old weights back"
            )
            members, pair, errors = await _read(config)
            findings = _findings(config, members, pair)
            lines += _lines(findings, "live pool after --fix")
    code = 1 if findings else (2 if errors else 0)
    doc = _doc(findings, errors=errors, fixed=fixed, skipped=skipped)
    return Outcome(code, tuple(lines), doc | {"renamed": [r.as_dict() for r in renamed]})


def _out_of_rotation(sid: ServerId, weight: int, want: int) -> str | None:
    """Why --fix must leave this weight alone, when the change would move the server into or
    out of rotation: weight 0 is a drain by weight, which only a drain or restore may undo or
    make (they honour the caps and the overrides)."""
    if weight == 0:
        return (
            f"weight 0 (out of rotation by weight, a drain): left at 0, not set to {want}; "
            "set its weight by hand once it should serve"
        )
    if want == 0:
        return (
            f"expected weight 0 would take it out of rotation: left at {weight}; "
            f"use lbhealthd drain {sid}, which honours the caps"
        )
    return None


def _fix_plan(
    config: Config, members: dict[str, dict[ServerId, Member]], findings: list[Finding]
) -> tuple[list[tuple[ServerId, int, int]], list[dict[str, Any]]]:
    """The weights to set back (server, expected, current), and the ones left alone, why."""
    owned, _ = _state(config)
    plan = []
    skipped: list[dict[str, Any]] = []
    for f in findings:
        if f.kind is not FindingKind.WEIGHT or f.server is None:
            continue
        sid = ServerId(f.pool, f.server)
        member = members.get(f.pool, {}).get(sid)
        entry = owned.get(sid)
        if member is None or (entry is not None and entry.weight is not None):
            continue  # lbhealthd is ramping this one up: not ours to fix here
        want = expectation(config.pool(f.pool), None).weight_of(f.server)
        if want is None or member.weight == want:
            continue
        why = _out_of_rotation(sid, member.weight, want)
        if why is None:
            plan.append((sid, want, member.weight))
        else:
            skipped.append(
                {"server": str(sid), "weight": member.weight, "expected": want, "reason": why}
            )
    return plan, skipped


async def _apply(
    config: Config,
    members: dict[str, dict[ServerId, Member]],
    plan: list[tuple[ServerId, int, int]],
) -> list[str]:
    """Set the weights back through the LB writer (an action record for each)."""
    try:
        store = Store.open(config.daemon.state_dir)
    except (LbhealthdError, OSError) as exc:
        return [f"not changed: state_dir {config.daemon.state_dir} is unusable: {exc}"]
    driver = open_driver(config, store)
    done = []
    try:
        writer = LbWriter(driver, Journal(store), path="audit")
        why = Why("audit_fix", "audit --fix: expected_weights", "audit")
        for sid, weight, before in plan:
            member = members[sid.pool][sid]
            if await writer.command(sid, member, "weight", weight, why=why):
                done.append(f"{sid}: weight {before} -> {weight}")
            else:
                done.append(f"{sid}: FAILED to set weight {weight}: {writer.last_error.get(sid)}")
        await writer.flush()
    finally:
        await driver.close()
    return done


def _refused(path: str, exc: UnsafeConfig) -> Outcome:
    lines = [
        f"not checked: {path} would run code when HAProxy reads it, so haproxy -c was not "
        "started on it:",
        *(f"  {r}" for r in exc.refusals),
        "lbhealthd never runs code from a candidate file; check such a file with haproxy -c "
        "in a sandbox (no secrets, no network, a throw-away user)",
    ]
    refused = [dataclasses.asdict(r) for r in exc.refusals]
    return Outcome(2, tuple(lines), _doc([], clean=None, syntax_ok=None, refused=refused))


def candidate(config: Config, path: str) -> Outcome:
    """Check a candidate haproxy.cfg: HAProxy's own syntax check, then servers and weights.
    A file that would run code as HAProxy parses it is refused (exit 2), never checked."""
    try:
        data = read_candidate(path)
    except OSError as exc:
        message = f"cannot read {path}: {exc.strerror or exc}"
        return Outcome(
            1,
            (f"haproxy -c: INVALID: {message}",),
            _doc([], clean=False, syntax_ok=False, syntax_message=message),
        )
    try:
        ok, message = check_candidate(data, path)
    except FileNotFoundError as exc:
        return Outcome(2, (str(exc),))
    except UnsafeConfig as exc:
        return _refused(path, exc)
    first, *more = message.split("\n")  # one line per HAProxy message
    lines = [f"haproxy -c: {'valid' if ok else 'INVALID'}: {first}", *more]
    if not ok:
        return Outcome(
            1, tuple(lines), _doc([], clean=False, syntax_ok=False, syntax_message=message)
        )
    try:
        backends = parse_backends(data.decode("utf-8", errors="replace"))
    except ValueError as exc:
        return Outcome(1, (*lines, f"{path}: {exc}"), _doc([], clean=False, syntax_ok=True))
    findings, renamed, against = _against(config, backends, Path(path).name)
    # The config's own list goes without saying; a set found elsewhere is named.
    lines += [f"  compared with {w}" for w in against if not w.endswith("listed in the config")]
    lines += _lines(findings, path)
    lines += _rename_lines(renamed)
    doc = _doc(findings, syntax_ok=True, syntax_message=message, compared_with=against)
    doc["renamed"] = [r.as_dict() for r in renamed]
    return Outcome(1 if findings else 0, tuple(lines), doc)


def _against(
    config: Config, backends: Mapping[str, Sequence[CfgServer]], source: str
) -> tuple[list[Finding], list[Rename], list[str]]:
    """The file's findings, its renames and what each pool was compared with: the config's
    ``servers``, else the set recorded at the daemon's first read, else the servers the LB
    lists now (when it can be read)."""
    _, recorded, addresses = _memory(config)
    findings: list[Finding] = []
    against = []
    unlisted = [p.name for p in config.pools if p.servers is None and p.name not in recorded]
    live = _live_sets(config, unlisted) if unlisted else {}
    gone_at = {**addresses, **live}
    for pool in config.pools:
        if pool.servers is not None:
            servers: list[str] | None = list(pool.servers)
            against.append(f"{pool.name}: the servers listed in the config")
        elif pool.name in recorded:
            servers = recorded[pool.name]
            against.append(f"{pool.name}: the set recorded in {config.daemon.state_dir}")
        elif pool.name in live:
            servers = sorted(live[pool.name])
            against.append(f"{pool.name}: the servers the load balancer lists now")
        else:
            servers = None
            against.append(f"{pool.name}: weights only (no server set known, the LB unread)")
        findings += audit_cfg(backends, expectation(pool, servers), source=source)
    cfg_at = {b: {s.name: s.address for s in servers} for b, servers in backends.items()}
    findings = sort_findings(findings)
    return findings, _renamed(findings, gone_at, cfg_at), against


def _live_sets(config: Config, pools: list[str]) -> Addresses:
    """The servers the LB lists in ``pools`` now, with their addresses (a pool that cannot
    be read is left out). Read in a thread of its own: the caller may run inside a loop."""

    async def read() -> Addresses:
        driver = open_driver(config)
        found: Addresses = {}
        try:
            for pool in pools:
                try:
                    snap = await driver.snapshot(pool)
                except DriverError:
                    continue
                found[pool] = {m.id.server: address_of(m) for m in snap.members}
        finally:
            await driver.close()
        return found

    with concurrent.futures.ThreadPoolExecutor(1) as pool_thread:
        return pool_thread.submit(asyncio.run, read()).result()
