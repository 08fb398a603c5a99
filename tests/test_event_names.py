"""The table of stable event names in docs/operations.md and the events the code can emit:
every name the code logs is in a table, and every name in a table is one the code logs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "operations.md"
PACKAGE = ROOT / "lbhealthd"

_CALL = re.compile(
    r"\blog\.(?:debug|info|warning|error|critical|exception)\("
    r"(?:\s*#[^\n]*)?\s*(f?)\"([a-z{][a-z0-9_{}.]*)\""
)
# decision_log's pairs of events for a pool entering and leaving a state
_PAIR = re.compile(r'\("([a-z][a-z0-9_]*)", "([a-z][a-z0-9_]*)"\),')
_ROW = re.compile(r"^\| ((?:`[a-z][a-z0-9_]*`(?:, )?)+) \|", re.M)
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def documented() -> set[str]:
    """The names in the daemon's and the agent's event tables."""
    text = DOCS.read_text(encoding="utf-8")
    start = text.index("### Event names")
    end = text.index("\n## ", text.index("It logs:", start))
    names: set[str] = set()
    for cell in _ROW.findall(text[start:end]):
        names.update(re.findall(r"`([a-z][a-z0-9_]*)`", cell))
    return names


def logged() -> tuple[set[str], set[str]]:
    """The event names logged by name, and the prefixes of names built at run time."""
    names: set[str] = set()
    built: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if "demo" in path.parts:
            continue  # the demo's own narration, not the daemon's events
        for is_f, name in _CALL.findall(path.read_text(encoding="utf-8")):
            (built if is_f else names).add(name)
    # Names the daemon logs through tables (decision_log's actions and pool states).
    from lbhealthd.daemon.decision_log import EVENTS

    names.update(EVENTS.values())
    pairs = _PAIR.findall((PACKAGE / "daemon" / "decision_log.py").read_text(encoding="utf-8"))
    assert len(pairs) == 2, pairs  # blind and inconsistent pools
    names.update(name for pair in pairs for name in pair)
    return names, built


def test_every_event_the_code_logs_is_documented() -> None:
    names, built = logged()
    missing = sorted(names - documented())
    assert not missing, f"events logged but not in docs/operations.md's tables: {missing}"
    assert built == {"{b.kind.value}_blocked"}, built  # drain_blocked, restore_blocked
    assert {"drain_blocked", "restore_blocked"} <= documented()


def test_every_documented_event_is_logged_somewhere() -> None:
    names, _ = logged()
    names |= {"drain_blocked", "restore_blocked"}
    stale = sorted(documented() - names)
    assert not stale, f"events in docs/operations.md's tables that the code never logs: {stale}"


def test_the_pattern_finds_a_call_spread_over_lines() -> None:
    """The control for the two tests above: a call whose name is on its own line is found."""
    source = 'log.warning(  # why\n    "some_event",\n    server=x,\n)\nlog.info(f"{k}_done")'
    assert _CALL.findall(source) == [("", "some_event"), ("f", "{k}_done")]
    assert all(_NAME.match(n) for n in documented())
