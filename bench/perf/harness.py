"""One run of the bench: the targets measured in turn, then the table, JSON and chart."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from .databases import templates
from .report import CONTEXT, Row, table, write_chart, write_json
from .targets import TARGETS, Bench, Settings

STEADY_STATE_RULE = (
    "Throughputs (1, 2) are steady-state rates on both sides: the clock starts when the"
    " first job/document is seen completed; rate = completed after that / time to the last."
)


def run(settings: Settings, only: list[str], out: Path) -> list[Row]:
    """Measure the targets named in ``only``; print the table, write JSON and the chart."""
    started = time.perf_counter()
    rows: list[Row] = []
    with templates() as made:
        bench = Bench(made, settings)
        for name in only:
            for kind in settings.backends:
                print(f"measuring {name} on {kind} ...", flush=True)
                target_started = time.perf_counter()
                measured = TARGETS[name](bench, kind)
                print(table(measured, header=False), flush=True)
                print(f"({time.perf_counter() - target_started:.0f} s)", flush=True)
                rows += measured
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    extra = {
        "finished_at": datetime.now(UTC).isoformat(),
        "seconds": round(seconds, 1),
        "settings": vars(settings),
        "backlog": {kind: [vars(p) for p in points] for kind, points in bench.backlog.items()},
        "pickup_ms": bench.pickup,
    }
    write_json(out / "bench.json", rows, extra)
    chart_problem = write_chart(out / "bench.png", rows, bench.backlog, bench.pickup)
    print()
    print(table(rows))
    print(STEADY_STATE_RULE)
    print()
    if bench.backlog:
        print(_backlog_curve(bench))
    targets = [row for row in rows if row.goal != CONTEXT]
    met = sum(row.met is True for row in targets)
    context = len(rows) - len(targets)
    print(f"{len(targets)} targets, {met} met ({context} rows of context), in {seconds:.0f} s")
    print(f"results: {out / 'bench.json'}, chart: {chart_problem or out / 'bench.png'}")
    return rows


def _backlog_curve(bench: Bench) -> str:
    lines = ["backlog curve, median ms per claim_due_items call (idle poll / claim of 10):"]
    for kind, points in bench.backlog.items():
        cells = (f"{p.backlog:,}: {p.idle_ms:.2f} / {p.claim_ms:.2f}" for p in points)
        lines.append(f"  {kind:<10} " + "   ".join(cells))
    return "\n".join(lines) + "\n"
