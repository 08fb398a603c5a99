"""Documentation that is generated from code stays in step with it."""

from __future__ import annotations

import re
from pathlib import Path

from lbhealthd.engine.hysteresis import render_mermaid

ROOT = Path(__file__).resolve().parent.parent


def test_state_diagram_is_current() -> None:
    """docs/decisions.md embeds exactly the diagram rendered from the transition table."""
    text = (ROOT / "docs" / "decisions.md").read_text()
    found = re.search(
        r"<!-- diagram:start -->\n```mermaid\n(.*?)```\n<!-- diagram:end -->", text, re.S
    )
    assert found, "diagram markers missing from docs/decisions.md"
    assert found.group(1) == render_mermaid()
