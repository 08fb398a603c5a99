"""The demo's picture: per-server load with drained periods shaded, the LB weights, and the share
of failed requests, over time. Rendered with matplotlib's Agg canvas (no display needed).
matplotlib comes with the ``demo`` extra; it is imported when a plot is drawn, so the rest of
the package imports without it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from lbhealthd.demo.report import Timeline

if TYPE_CHECKING:
    from matplotlib.axes import Axes

COLORS = ("tab:red", "tab:orange", "tab:blue", "tab:green", "tab:purple", "tab:brown")


def _markers(ax: Axes, tl: Timeline, labels: bool) -> None:
    marks = [(tl.phases.overload_at, "overload begins"), (tl.phases.fix_at, "audit --fix")]
    fired = tl.named("balance_alert_fired")
    if fired:
        marks.append((tl.t(fired[0]), "balance alert"))
    if tl.fixed_at is not None:
        marks.append((tl.fixed_at, "weights fixed"))
    enforced = tl.named("weight_enforced")
    if enforced:
        marks.append((tl.t(enforced[0]), "weights enforced"))
    for i, (t, text) in enumerate(sorted(marks)):
        ax.axvline(t, color="0.3", linestyle=":", linewidth=1)
        if labels:
            ax.annotate(
                text,
                (t, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -11 - 11 * (i % 3)),
                textcoords="offset points",
                fontsize=8,
                color="0.25",
            )


def render(
    tl: Timeline, path: Path, marks: tuple[float, float] = (1.0, 0.6), *, enforce: bool = False
) -> Path:
    """Write the PNG to ``path`` and return it. ``marks``: the load signal's high and low;
    ``enforce``: the daemon ran with ``enforce_weights`` on (said in the title)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_load, ax_weight, ax_fail = fig.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.4, 1.6]}
    )
    times = [p.t for p in tl.points]
    spans = tl.drained_spans()
    for i, name in enumerate(tl.servers):
        color = COLORS[i % len(COLORS)]
        loads = [next(s.load for s in p.servers if s.name == name) for p in tl.points]
        ax_load.plot(times, loads, color=color, linewidth=1.6, label=name)
        for j, (start, end) in enumerate(spans.get(name, [])):
            ax_load.axvspan(
                start,
                end,
                color=color,
                alpha=0.13,
                label=f"{name} drained" if j == 0 else None,
            )
        weights = [next(s.weight for s in p.servers if s.name == name) for p in tl.points]
        ax_weight.step(times, weights, where="post", color=color, linewidth=1.4, label=name)
    high, low = marks
    ax_load.axhline(high, color="black", linestyle="--", linewidth=0.8)
    ax_load.axhline(low, color="0.5", linestyle="--", linewidth=0.8)
    ax_load.text(0.2, high, f" high {high:g}", va="bottom", fontsize=8)
    ax_load.text(0.2, low, f" low {low:g}", va="bottom", fontsize=8, color="0.4")
    ax_load.set_ylabel("load (queue+in flight)/slots")
    ax_load.set_ylim(bottom=0)
    ax_load.set_title(
        "lbhealthd demo: HAProxy weights 100,100,1,1,1 send most traffic to 2 of 5 servers"
        + (
            "\nwith enforce_weights on: lbhealthd sets them back to expected_weights"
            if enforce
            else ""
        )
    )
    ax_load.legend(loc="upper right", fontsize=8, ncol=2)
    ax_weight.set_ylabel("HAProxy weight")
    ax_weight.set_ylim(bottom=0)

    end = math.ceil(tl.phases.end)
    seconds = list(range(end))
    sent = [0] * end
    failed = [0] * end
    for r in tl.records:
        b = int(r.t)
        if 0 <= b < end:
            sent[b] += 1
            failed[b] += r.failed
    rate = [100.0 * f / s if s else 0.0 for f, s in zip(failed, sent, strict=True)]
    ax_fail.bar(seconds, rate, width=0.9, align="edge", color="tab:red", alpha=0.7)
    ax_fail.set_ylabel("failed requests %")
    ax_fail.set_ylim(0, 100)
    ax_fail.set_xlabel("seconds since the load started")
    twin = ax_fail.twinx()
    twin.plot([s + 0.5 for s in seconds], sent, color="0.3", linewidth=1)
    twin.set_ylabel("requests/s sent", color="0.3")
    twin.set_ylim(bottom=0)
    for ax in (ax_load, ax_weight, ax_fail):
        _markers(ax, tl, labels=ax is ax_load)
        ax.grid(alpha=0.3)
        ax.set_xlim(0, tl.phases.end)
    fig.savefig(path, dpi=100)
    return path
