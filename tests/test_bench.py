"""`make bench` works: the harness runs every target at a tiny size on each back end.

A smoke test of bench/perf, not a benchmark: nothing here looks at speed. It checks
that every target of issue 14 gets a measured row (peers may be missing where the
bench extra is not installed: their rows then say so), met or missed, that the rows of
context (ceilings and floors, with no goal) get their ratio, and that the table, the
JSON file and the chart are written.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.perf.harness import run
from bench.perf.report import CONTEXT
from bench.perf.targets import TARGETS, Settings

TINY = {
    "rounds": 1,
    # Enough that even the raw loop (45,000 jobs/s on PostgreSQL, claims of 100: 1,000
    # went in two 10 ms polls) is seen between its first and last claim.
    "jobs": 5000,
    "production_documents": 30,  # several outcome commits, so a first completion is seen
    "enqueue_documents": 10,
    "http_uploads": 16,
    "pickup_samples": 3,
    "backlog_sizes": [100, 1_000],
    "rss_documents": (10, 60),
}
TARGET_NUMBERS = {"1", "2", "3", "4", "5", "6", "7"}
PEERS = ("pgqueuer", "huey", "procrastinate")


def _peer_missing(note: str) -> bool:
    return any(f"{peer} is not installed" in note for peer in PEERS)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_bench_measures_every_target_at_a_tiny_size(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    if backend == "postgresql":
        request.getfixturevalue("postgres_url")  # skips (or fails under CI) without a server

    rows = run(Settings(backends=[backend], **TINY), list(TARGETS), tmp_path)

    unmeasured = [(row.target, row.note) for row in rows if row.measured is None]
    assert [entry for entry in unmeasured if not _peer_missing(entry[1])] == []
    assert {row.target.split()[0] for row in rows} == TARGET_NUMBERS
    measured = [row for row in rows if row.measured is not None]
    assert all(row.met is not None for row in measured if row.goal != CONTEXT)
    assert all(row.ratio is not None for row in measured if row.goal == CONTEXT)
    printed = capsys.readouterr().out
    assert "| target | back end | measured | reference | ratio | goal | result |" in printed
    assert all(row.target in printed for row in rows)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert [row["target"] for row in saved["rows"]] == [row.target for row in rows]
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "bench.png").stat().st_size > 0


@pytest.mark.parametrize("documents", ["text", "pdf"])
def test_the_in_process_drain_processes_every_job(documents: str) -> None:
    command = ["bench.inprocess_drain", "sqlite", "10", "25", "--documents", documents]
    finished = subprocess.run(
        [sys.executable, "-m", *command],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert f"sqlite, claims of 10, {documents}: 25 jobs" in finished.stdout


def test_the_history_drain_compares_a_burst_onto_a_history_with_one_onto_nothing() -> None:
    command = ["bench.history_drain", "--history", "300", "--jobs", "200", "--rounds", "1"]
    finished = subprocess.run(
        [sys.executable, "-m", *command, "--batch", "10", "--backends", "sqlite"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert "sqlite, claims of 10: 200 jobs onto 300 finished" in finished.stdout
    assert "ratio" in finished.stdout
