"""Small helpers shared by the measures: medians, child processes, waiting."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
CORPUS = PROJECT_ROOT.parent / "shared" / "corpus"
NOOP_PROCESSOR = "bench.perf.noop:noop"
RECORDING_PROCESSOR = "bench.perf.noop:record_call"
# The recording processor appends time.time() of each call to this file.
CALLS_FILE_ENV = "BENCH_CALLS_FILE"


class NotMeasured(Exception):
    """A measure (usually a peer's) could not run; the table says why."""


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile: with 50 samples, p99 is the largest."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.4999))
    return ordered[min(rank, len(ordered)) - 1]


def wait_until(condition: Callable[[], bool], timeout: float, every: float = 0.005) -> float:
    """Poll ``condition`` until true; the time.perf_counter() when it was seen true."""
    deadline = time.perf_counter() + timeout
    while True:
        if condition():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"not done within {timeout:.0f} s")
        time.sleep(every)


def steady_rate(
    done: Callable[[], int],
    total: int,
    processes: Sequence[subprocess.Popen] = (),
    timeout: float = 600,
    every: float = 0.01,
) -> float:
    """Items per second in steady state, the rule every throughput measure follows.

    The clock starts when ``done()`` (items completed so far) is first seen above zero,
    so the start-up of a fresh interpreter and its imports (measured on its own by
    target 7) does not weigh on the rate; the rate is the items completed after that
    over the time from then to the last completion. ``processes`` (if given) must not
    fail on the way.
    """
    deadline = time.perf_counter() + timeout
    watch = (done, processes, deadline, every)
    started, already_done = _poll_count(*watch, lambda count: count > 0, total)
    if already_done >= total:
        raise NotMeasured(f"all {total} done before a first completion was seen: too few items")
    finished, _ = _poll_count(*watch, lambda count: count >= total, total)
    return (total - already_done) / (finished - started)


def _poll_count(
    done: Callable[[], int],
    processes: Sequence[subprocess.Popen],
    deadline: float,
    every: float,
    reached: Callable[[int], bool],
    total: int,
) -> tuple[float, int]:
    """(perf_counter(), count) when ``reached(count)`` first holds."""
    while True:
        count, now = done(), time.perf_counter()
        if reached(count):
            return now, count
        _check_running(processes)
        if now > deadline:
            raise NotMeasured(f"{count} of {total} done, time is up")
        time.sleep(every)


def _check_running(processes: Sequence[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() not in (None, 0):
            raise NotMeasured(f"a worker failed ({process.returncode}): {_last_error(process)}")


def _last_error(process: subprocess.Popen) -> str:
    if process.stderr is None:
        return ""
    return " ".join(process.stderr.read().decode(errors="replace").strip().splitlines()[-1:])


def bench_env(**settings: str) -> dict[str, str]:
    """The environment of a child: this one without DOCQUEUE_* settings, plus ``settings``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCQUEUE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env.update(settings)
    return env


def docqueue_env(url: str, processor: str, isolation: str, **extra: str) -> dict[str, str]:
    return bench_env(
        DATABASE_URL=url,
        DOCQUEUE_PROCESSOR=processor,
        DOCQUEUE_PROCESS_ISOLATION=isolation,
        DOCQUEUE_SCHEDULER_ENABLED="false",
        **extra,
    )


def start_worker(env: dict[str, str], batch_size: int | None = None) -> subprocess.Popen:
    """``docqueue queue worker --concurrency 1``: one worker process, as users start it."""
    command = [str(VENV_BIN / "docqueue"), "queue", "worker", "--concurrency", "1"]
    if batch_size is not None:
        command += ["--batch-size", str(batch_size)]
    return subprocess.Popen(
        command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def start_reference_worker(kind: str, *args: object) -> subprocess.Popen:
    """A reference system's worker in a fresh interpreter (see bench/perf/workers.py)."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.perf.workers", kind, *map(str, args)],
        env=bench_env(),
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def run_to_completion(processes: list[subprocess.Popen], timeout: float = 180) -> None:
    """Wait for the started processes to exit 0."""
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            stop(processes)
            raise NotMeasured(f"a worker was still running after {timeout:.0f} s") from exc
    _check_running(processes)


def reference_rate(
    kind: str, args: Sequence[object], workers: int, done: Callable[[], int], total: int
) -> float:
    """Steady-state rate of ``workers`` reference workers that exit when nothing is left."""
    with running([start_reference_worker(kind, *args) for _ in range(workers)]) as processes:
        rate = steady_rate(done, total, processes)
        run_to_completion(processes)
    return rate


@contextmanager
def running(processes: list[subprocess.Popen]) -> Iterator[list[subprocess.Popen]]:
    """Stop the processes (SIGTERM, then SIGKILL) however the block ends."""
    try:
        yield processes
    finally:
        stop(processes)


def stop(processes: list[subprocess.Popen], grace: float = 10) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kib(pid: int) -> int:
    """VmRSS of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError(f"no VmRSS for pid {pid}")
