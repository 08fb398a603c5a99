"""The words of `lbhealthd restore` from the daemon's answer, case by case (no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from lbhealthd.model import ServerId
from lbhealthd.oncall.restored import restore_lines

S1 = ServerId("api", "s1")
SICK: dict[str, Any] = {
    "desired": "ready",
    "verdict": "overloaded",
    "over": "cpu 0.95 >= 0.9",
    "bad": 1,
    "fall": 3,
    "desired_weight_fraction": 1.0,
}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(
            {"kept_in": True, "until": None, "notes": ["kept in rotation"], "status": SICK},
            (
                "restore: api/s1 is back in rotation: kept in rotation, held in until you "
                "restore it again (via the running daemon)",
                "api/s1 is still overloaded (cpu 0.95 >= 0.9): lbhealthd does not drain it "
                "during the hold; once you end the hold, it drains it again at once, caps "
                "permitting, if by then it has had 3 bad samples in a row (fall 3). To take it "
                "out now: lbhealthd drain api/s1 --reason TEXT; lbhealthd restore api/s1 ends "
                "the hold now",
            ),
            id="hold-without-end",
        ),
        pytest.param(
            {"notes": [], "status": SICK},
            (
                "restore: nothing to undo (via the running daemon)",
                "api/s1 is in rotation, not held, and still overloaded (cpu 0.95 >= 0.9): "
                "lbhealthd drains it after 3 bad samples in a row (fall 3; 1 so far)",
            ),
            id="in-rotation-sick",
        ),
        pytest.param(
            {
                "notes": ["ended the keep-in hold set by alice"],
                "status": SICK
                | {
                    "bad": 4,
                    "blocked": {
                        "action": "drain",
                        "rule": "max_drained",
                        "reason": "overloaded, but draining it would exceed max_drained 40%",
                    },
                },
            },
            (
                "restore: ended the keep-in hold set by alice (via the running daemon)",
                "api/s1 stays in rotation, not held: lbhealthd would drain it but cannot "
                "(max_drained: overloaded, but draining it would exceed max_drained 40%)",
            ),
            id="drain-blocked-by-the-cap",
        ),
        pytest.param(
            {"applied": False, "lb_error": "timeout", "notes": ["x"], "status": SICK},
            (
                "restore: recorded for api/s1 (x), but NOT yet applied (timeout); the daemon "
                "keeps trying every round",
            ),
            id="not-applied",
        ),
        pytest.param(
            {"lb_state": "ready", "notes": [], "status": None},
            ("restore: api/s1 is ready in the LB: nothing to undo (via the running daemon)",),
            id="server-not-read",
        ),
    ],
)
def test_restore_words(doc: dict[str, Any], expected: tuple[str, ...]) -> None:
    """Each state the daemon reports after a restore has its own plain words."""
    assert restore_lines(S1, doc, "") == expected


def test_the_direct_paths_who_is_the_real_uid_not_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``LOGNAME`` and ``USER`` are the caller's to set: the name recorded with an override
    made with the daemon down is the real uid's; for root, sudo's ``SUDO_USER`` is named as
    such, and only when it is a plain name."""
    import os
    import pwd

    from lbhealthd.oncall.direct import who

    monkeypatch.setenv("LOGNAME", "mallory")
    monkeypatch.setenv("USER", "mallory")
    monkeypatch.setenv("SUDO_USER", "alice")
    uid = os.getuid()
    name = pwd.getpwuid(uid).pw_name
    via = ", via sudo by alice" if uid == 0 else ""
    assert who() == f"{name} (uid {uid}{via}, cli)"
    assert "mallory" not in who()
    monkeypatch.setenv("SUDO_USER", "alice\\n(uid 0)")
    assert who() == f"{name} (uid {uid}, cli)"
