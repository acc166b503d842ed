"""The results: one table of every target, a JSON file and a PNG chart."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .common import NotMeasured, median


class Series:
    """The values of one measure over the rounds, or why it could not be measured.

    A failure ends the series (later rounds are skipped) but never the bench.
    """

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.reason: str | None = None

    def run(self, measure: Callable[[], Any]) -> None:
        if self.reason is not None:
            return
        try:
            self.values.append(measure())
        except NotMeasured as exc:
            self.reason = str(exc)
        except Exception as exc:  # a crash of one measure must not end the others
            traceback.print_exc(file=sys.stderr)
            self.reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]

    def median(self, value: Callable[[Any], float] = float) -> float:
        return median([value(item) for item in self.values])


@dataclass
class Row:
    target: str
    backend: str
    unit: str
    goal: str  # e.g. ">= 0.5" (a ratio) or "<= 5 ms" (an absolute bound)
    measured: float | None = None
    reference: float | None = None
    reference_label: str = ""
    ratio: float | None = None
    met: bool | None = None
    # How far the goal is met: 2.0 is twice as good as the goal, 0.5 half as good.
    margin: float | None = None
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)


CONTEXT = "(context)"


def ratio_row(
    target: str,
    backend: str,
    unit: str,
    measured: Series,
    reference: Series,
    reference_label: str,
    at_least: float | None = None,
    at_most: float | None = None,
    value: Callable[[Any], float] = float,
) -> Row:
    """measured / reference (medians over the rounds) against a bound on the ratio; with
    no bound, a ``CONTEXT`` row: a figure that explains the targets, met by nothing."""
    goal = CONTEXT
    if at_least is not None:
        goal = f">= {at_least:g} x"
    elif at_most is not None:
        goal = f"<= {at_most:g} x"
    row = Row(target, backend, unit, goal, reference_label=reference_label)
    reason = measured.reason or reference.reason
    if reason is not None or not measured.values or not reference.values:
        row.note = f"not measured: {reason or 'no rounds'}"
        return row
    row.measured, row.reference = measured.median(value), reference.median(value)
    row.samples = {
        "measured": [value(v) for v in measured.values],
        "reference": [value(v) for v in reference.values],
    }
    row.ratio = row.measured / row.reference if row.reference else None
    if row.ratio and goal != CONTEXT:
        row.margin = row.ratio / at_least if at_least is not None else at_most / row.ratio
        row.met = row.margin >= 1
    return row


def bound_row(target: str, backend: str, unit: str, measured: Series, at_most: float) -> Row:
    """An absolute figure (median over the rounds) against an upper bound."""
    row = Row(target, backend, unit, f"<= {at_most:g} {unit}")
    if measured.reason is not None or not measured.values:
        row.note = f"not measured: {measured.reason or 'no rounds'}"
        return row
    row.measured = measured.median()
    row.samples = {"measured": [float(v) for v in measured.values]}
    row.margin = at_most / row.measured if row.measured > 0 else None
    row.met = row.measured <= at_most
    return row


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}".strip()


COLUMNS = ("target", "back end", "measured", "reference", "ratio", "goal", "result")


def table(rows: list[Row], header: bool = True) -> str:
    """The rows as a Markdown table (readable in a terminal, pastable in a note)."""
    lines = [" | ".join(COLUMNS), " | ".join("---" for _ in COLUMNS)] if header else []
    for row in rows:
        reference = _number(row.reference, row.unit)
        if row.reference_label and row.reference is not None:
            reference = f"{reference} ({row.reference_label})"
        result = row.note or {True: "met", False: "MISSED", None: "-"}[row.met]
        cells = (
            row.target,
            row.backend,
            _number(row.measured, row.unit),
            reference,
            "-" if row.ratio is None else f"{row.ratio:.2f}",
            row.goal,
            result,
        )
        lines.append(" | ".join(cells))
    return "\n".join(f"| {line} |" for line in lines)


def write_json(path: Path, rows: list[Row], extra: dict[str, Any]) -> None:
    path.write_text(json.dumps({**extra, "rows": [asdict(row) for row in rows]}, indent=2))


def write_chart(
    path: Path,
    rows: list[Row],
    backlog: dict[str, list[Any]],
    pickup: dict[str, list[float]],
) -> str | None:
    """One PNG: each target's margin, the backlog curve, pickup latencies.

    Returns why no chart was written, or None.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib is not installed ({exc})"
    figure, (ratios, curve, latencies) = plt.subplots(1, 3, figsize=(20, 7))
    _plot_margins(ratios, [row for row in rows if row.margin is not None])
    _plot_backlog(curve, backlog)
    _plot_pickup(latencies, pickup)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None


def _plot_margins(axes: Any, rows: list[Row]) -> None:
    """Each target's margin: right of 1 is met, left of it missed."""
    axes.barh(
        range(len(rows)),
        [row.margin for row in rows],
        color=["tab:green" if row.met else "tab:red" for row in rows],
    )
    axes.set_yticks(range(len(rows)), [f"{row.target} ({row.backend})" for row in rows])
    axes.tick_params(axis="y", labelsize=7)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_xlabel("margin: how many times the goal is met (log; green: met)")
    axes.set_title("Targets of issue 14")


def _plot_backlog(axes: Any, backlog: dict[str, list[Any]]) -> None:
    for backend, points in backlog.items():
        sizes = [point.backlog for point in points]
        axes.plot(sizes, [point.idle_ms for point in points], marker="o", label=f"{backend} idle")
        axes.plot(sizes, [point.claim_ms for point in points], marker="s", label=f"{backend} claim")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("not-yet-due items in the queue")
    axes.set_ylabel("ms per claim_due_items call (median)")
    axes.set_title("Idle poll and claim of 10 against the backlog")
    axes.legend()


def _plot_pickup(axes: Any, pickup: dict[str, list[float]]) -> None:
    for backend, samples in pickup.items():
        ordered = sorted(samples)
        axes.plot(ordered, [(n + 1) / len(ordered) for n in range(len(ordered))], label=backend)
    axes.set_xscale("symlog", linthresh=1)
    axes.set_xlabel("upload committed -> processor called, ms")
    axes.set_ylabel("fraction of samples")
    axes.set_title("Pickup on an idle queue")
    axes.legend()
