"""What one large upload costs a gunicorn worker in memory, read from /proc.

gunicorn as shipped serves 2 workers x 4 threads: 8 uploads of DOCQUEUE_MAX_UPLOAD_MB
(50 MB) can be in flight at once, and every copy of a file's bytes that an upload
holds at its peak multiplies that. A worker OOM-killed mid-upload fails every
request it was serving. The serving worker's peak RSS (VmHWM, reset just before
the upload through /proc/PID/clear_refs) is what a user's machine has to have.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.e2e.server import Server, migrated_env

MB = 1024 * 1024
FILE_BYTES = 50 * MB
# The peak may hold the body's spooled file in the page cache (not RSS), the bytes
# read from it, and what the driver makes of them to send: up to about twice the file.
# Before, it held four to five copies (a werkzeug part buffer, the bytes, psycopg's
# escaped text...): 226 MB on SQLite, 330 MB on PostgreSQL for 50 MB.
MOST_PEAK_GROWTH = 2.5 * FILE_BYTES
# Once answered, the upload's memory is given back; before, the driver kept a copy
# for as long as its connection lived (50 MB per pooled connection that stored one).
MOST_KEPT_GROWTH = FILE_BYTES / 4


def text_file(size: int) -> bytes:
    """Text of ``size`` bytes that no earlier test uploaded (a new document)."""
    words = [b"queue", b"lease", b"upload", b"invoice", b"draft", b"report", b"\n"]
    seed = random.Random()
    chunk = b" ".join(seed.choice(words) for _ in range(200_000))
    return (chunk * (size // len(chunk) + 1))[:size]


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    """Make VmHWM the current RSS (Linux: writing 5 to clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.fixture
def one_worker(database_url: str, tmp_path: Path):
    """gunicorn as shipped with one worker (so it serves the upload) and no scheduler
    (so no claim reads the document back into that worker)."""
    env = migrated_env(database_url, {"DOCQUEUE_SCHEDULER_ENABLED": "false"})
    server = Server(env, workers=1, log_path=tmp_path / "server.log").start()
    try:
        yield server
    finally:
        server.stop()


class Growth(NamedTuple):
    """How much one upload raised the serving worker's RSS, in bytes."""

    peak: int  # at the upload's peak
    kept: int  # once it was answered


def large_upload(server: Server) -> Growth:
    """Upload FILE_BYTES of new text (answered 202) and watch its one worker's RSS."""
    [worker] = server.worker_pids()
    warm = server.upload("warm.txt", text_file(MB))  # the path's code loaded, once
    assert warm[0] == 202, warm
    content = text_file(FILE_BYTES)
    reset_peak(worker)
    before_kb = status_kb(worker, "VmRSS")

    reply = server.upload_reply("large.txt", content, timeout=120)

    assert reply.status == 202, reply.body
    assert reply.body["size"] == FILE_BYTES
    return Growth(
        peak=(status_kb(worker, "VmHWM") - before_kb) * 1024,
        kept=(status_kb(worker, "VmRSS") - before_kb) * 1024,
    )


def test_a_50_mb_upload_holds_at_most_about_two_copies_in_the_worker(one_worker: Server):
    growth = large_upload(one_worker)

    assert growth.peak < MOST_PEAK_GROWTH, (
        f"one {FILE_BYTES // MB} MB upload raised the worker's peak RSS by "
        f"{growth.peak / MB:.0f} MB ({growth.peak / FILE_BYTES:.1f} copies of the file)"
    )


def test_the_worker_gives_a_large_uploads_memory_back(one_worker: Server):
    growth = large_upload(one_worker)

    assert growth.kept < MOST_KEPT_GROWTH, (
        f"the worker kept {growth.kept / MB:.0f} MB more RSS after storing one "
        f"{FILE_BYTES // MB} MB upload"
    )
