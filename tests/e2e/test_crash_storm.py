"""End to end: a crash storm. Workers SIGKILLed at random while documents flow, fail and
are reprocessed and cancelled; in the end every document is where the calls say.

gunicorn (2 workers, schedulers on) and standalone workers (4 on PostgreSQL, 2 on
SQLite) work the queue with a 3 s lease. Meanwhile:

- a processor (``storm_extract``) records every call (document, pid, start, end)
  and fails the first call of one document in 20, transiently;
- a thread asks at random to reprocess documents, and cancels queue items
  through the admin API, keeping a model of what each document must end as;
- every few seconds a random worker process (a standalone worker, or a gunicorn
  worker: a child of the master) is SIGKILLed; gunicorn replaces its own, and the
  test restarts the standalone ones.

Then the killing stops and the queue drains. Checks: each document ends as the
model predicts (cancelled when its latest successful action was a cancel, else
completed); nothing is left pending or in progress; no document was processed
twice while a lease held (two calls on one document overlap only when the first
one's process was killed, and then the second starts after that lease ran out).

Isolation is ``none``: this is about claims, leases and fencing under kills, not
about child processes; without a child per document the storm runs several
times faster, and a SIGKILL hits the processing itself. DOCQUEUE_STORM_DOCUMENTS
sets the size (``make stress`` runs 2,000).
"""

from __future__ import annotations

import http.client
import itertools
import os
import random
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.processors import RECORD_ENV, STORM_SEEN_ENV, WORK_ENV
from tests.e2e.server import (
    Server,
    admin_headers,
    start_worker,
    stop_worker,
    wait_for,
)

DOCUMENTS = int(os.environ.get("DOCQUEUE_STORM_DOCUMENTS", "200"))
LEASE_SECONDS = 3.0
# A killed call's lease was live when it was killed and runs LEASE_SECONDS past
# its last heartbeat (every third of a lease): it ends no earlier than about
# 2/3 of a lease after the kill. Half a lease leaves room for timer jitter.
LEASE_AFTER_KILL_SECONDS = LEASE_SECONDS / 2
KILL_EVERY_SECONDS = (1.0, 3.0)
ACTION_EVERY_SECONDS = (0.1, 0.4)
REPROCESS_SHARE = 0.6  # of the actions; the others are cancels
# Kills go on until this share of the work is left (then the queue drains in peace).
KILL_UNTIL_LEFT = 0.03
# Bounds on each phase: the uploads, the storm, the drain.
PHASE_TIMEOUT_SECONDS = 60 + DOCUMENTS * 0.2
PASSWORD = "storm"
ADMIN = admin_headers(PASSWORD)
# A gunicorn worker killed mid-request: the connection fails, or the answer stops short.
BROKEN_BY_A_KILL = (OSError, http.client.HTTPException)


@dataclass
class Model:
    """What each document must end as, from the answers to the test's own calls."""

    ids: dict[str, int] = field(default_factory=dict)  # filename -> document id
    latest_item: dict[int, int] = field(default_factory=dict)  # document id -> item id
    cancelled: set[int] = field(default_factory=set)  # documents whose last action was a cancel
    cancel_times: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    reprocesses: int = 0
    cancels: int = 0
    cancels_refused: int = 0

    def expected(self, document_id: int) -> str:
        return "cancelled" if document_id in self.cancelled else "completed"


class Storm:
    """The uploads, the random reprocess/cancel calls and the kills, each a thread."""

    def __init__(self, server: Server, env: dict[str, str], tmp_path: Path, workers: int):
        self.server, self.env, self.tmp_path = server, env, tmp_path
        self.model = Model()
        self.rng = random.Random(os.environ.get("DOCQUEUE_STORM_SEED", "storm"))
        self.stop_actions = threading.Event()
        self.stop_kills = threading.Event()
        self.lock = threading.Lock()
        self.workers = [self._start_worker(n) for n in range(workers)]
        self.kills: list[tuple[int, float, str]] = []  # pid, time.time(), which
        self.errors: list[str] = []
        self.connection_errors = 0

    def _start_worker(self, n: int):
        log = self.tmp_path / f"worker-{n}.log"
        return start_worker(self.env, log, "--concurrency", "1", "--batch-size", "5")

    def _call(self, call, *args, **kwargs):
        """A request, sent again when a kill broke its connection (its outcome unknown)."""
        for _ in range(5):
            try:
                return call(*args, **kwargs)
            except BROKEN_BY_A_KILL:  # the gunicorn worker serving it was killed
                self.connection_errors += 1
                time.sleep(0.2)
        return call(*args, **kwargs)

    def upload(self, part: int, parts: int) -> None:
        """Upload every ``parts``-th document, from the ``part``-th."""
        for n in range(part, DOCUMENTS, parts):
            filename = f"storm-{n}.txt"
            data = f"storm document {n}".encode()
            # Sent again after a broken connection: the same bytes answer 200, duplicate.
            status, body = self._call(self.server.upload, filename, data)
            if status not in (200, 202):
                self.errors.append(f"upload {filename}: {status} {body}")
                continue
            with self.lock:
                self.model.ids[filename] = body["id"]
                self.model.latest_item[body["id"]] = body["queue_item"]["id"]

    def act(self) -> None:
        """Reprocess a random document, or cancel its latest item, until told to stop."""
        while not self.stop_actions.wait(self.rng.uniform(*ACTION_EVERY_SECONDS)):
            with self.lock:
                if not self.model.latest_item:
                    continue
                document_id = self.rng.choice(list(self.model.latest_item))
            if self.rng.random() < REPROCESS_SHARE:
                self._reprocess(document_id)
            else:
                self._cancel(document_id)

    def _reprocess(self, document_id: int) -> None:
        status, body = self._call(
            self.server.request, "POST", f"/api/documents/{document_id}/reprocess"
        )
        if status != 202:
            self.errors.append(f"reprocess {document_id}: {status} {body}")
            return
        with self.lock:
            self.model.reprocesses += 1
            self.model.latest_item[document_id] = body["queue_item"]["id"]
            self.model.cancelled.discard(document_id)

    def _cancel(self, document_id: int) -> None:
        item_id = self.model.latest_item[document_id]
        sent = time.time()
        errors_before = self.connection_errors
        status, body = self._call(
            self.server.request, "POST", f"/api/queue/items/{item_id}/cancel", headers=ADMIN
        )
        if status == 409 and self.connection_errors > errors_before:
            # Refused, but a first try may have cancelled it before its connection broke.
            status, item = self._call(
                self.server.request, "GET", f"/api/queue/items/{item_id}", headers=ADMIN
            )
            status = 200 if item["status"] == "cancelled" else 409
        with self.lock:
            if status == 200:
                self.model.cancels += 1
                self.model.cancelled.add(document_id)
                self.model.cancel_times[document_id].append(sent)
            elif status == 409:
                self.model.cancels_refused += 1  # already finished: nothing changes
            else:
                self.errors.append(f"cancel item {item_id}: {status} {body}")

    def kill(self) -> None:
        """SIGKILL a random worker process every few seconds until told to stop."""
        while not self.stop_kills.wait(self.rng.uniform(*KILL_EVERY_SECONDS)):
            gunicorn_workers = sorted(self.server.worker_pids())
            victims = [("standalone", n) for n in range(len(self.workers))]
            victims += [("gunicorn", pid) for pid in gunicorn_workers]
            kind, which = self.rng.choice(victims)
            pid = self.workers[which].pid if kind == "standalone" else which
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue  # it was being replaced already
            self.kills.append((pid, time.time(), kind))
            if kind == "standalone":
                self.workers[which].wait(timeout=10)
                self.workers[which] = self._start_worker(which)

    def stop_workers(self) -> list[int]:
        """SIGTERM each, once it has booted (before that, SIGTERM kills it outright)."""
        wait_for(
            lambda: all(handles_sigterm(worker.pid) for worker in self.workers),
            "the workers to boot",
            30,
        )
        return [stop_worker(worker) for worker in self.workers]


def handles_sigterm(pid: int) -> bool:
    """Whether the process has its own SIGTERM handler yet (SigCgt in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


@dataclass
class Call:
    filename: str
    pid: int
    start: float
    end: float | None = None


def read_calls(record: Path) -> dict[str, list[Call]]:
    """Each document's processor calls, by start time; a call without an end was killed."""
    calls: dict[tuple[str, int, str], Call] = {}
    for line in record.read_text().splitlines():
        kind, filename, pid, start, *rest = line.split()
        key = (filename, int(pid), start)
        if kind == "S":
            calls[key] = Call(filename, int(pid), float(start))
        else:
            calls[key].end = float(rest[0])
    by_document: dict[str, list[Call]] = defaultdict(list)
    for call in calls.values():
        by_document[call.filename].append(call)
    for document_calls in by_document.values():
        document_calls.sort(key=lambda call: call.start)
    return by_document


def processed_while_leased(
    calls: dict[str, list[Call]],
    kills: list[tuple[int, float, str]],
    cancel_times: dict[str, list[float]],
) -> list[str]:
    """Two calls of one document at once, when the first one's lease still held.

    A call whose process was killed held its lease until about a lease after the
    kill; a cancelled item's lease ends with the cancel (its worker may finish
    the call, with isolation off, and drop the result).
    """
    killed_at = {pid: at for pid, at, _ in kills}
    violations = []
    for filename, document_calls in calls.items():
        for first, second in itertools.pairwise(document_calls):
            if first.end is not None and second.start >= first.end:
                continue
            if any(first.start <= at <= second.start for at in cancel_times.get(filename, ())):
                continue
            kill = killed_at.get(first.pid)
            lease_ran_out = kill is not None and second.start >= kill + LEASE_AFTER_KILL_SECONDS
            if first.end is None and lease_ran_out:
                continue
            violations.append(f"{filename}: {first} then {second} (kill at {kill})")
    return violations


def drain(server: Server) -> dict:
    """Wait (bounded) until nothing is pending or in progress; the last stats."""
    deadline = time.monotonic() + PHASE_TIMEOUT_SECONDS
    while True:
        status, stats = server.get("/api/queue/stats")
        if status == 200 and stats["pending"] == stats["in_progress"] == 0:
            return stats
        if time.monotonic() > deadline:
            return stats
        time.sleep(0.5)


def work_left(server: Server) -> int:
    """Items pending or in progress (all of them while the answer is broken by a kill)."""
    try:
        status, stats = server.get("/api/queue/stats")
    except BROKEN_BY_A_KILL:  # the gunicorn worker answering was killed
        return DOCUMENTS
    return stats["pending"] + stats["in_progress"] if status == 200 else DOCUMENTS


def final_statuses(server: Server) -> dict[int, dict]:
    documents, page = {}, 1
    while True:
        status, body = server.get(f"/api/documents?per_page=100&page={page}")
        assert status == 200, body
        documents.update({d["id"]: d for d in body["items"]})
        if page * 100 >= body["total"]:
            return documents
        page += 1


def explained_failure(server: Server, document: dict) -> bool:
    """A failure the storm can cause: every attempt lost to kills, at most one transient."""
    status, item = server.request(
        "GET", f"/api/queue/items/{document['queue_item']['id']}", headers=ADMIN
    )
    outcomes = [entry["outcome"] for entry in item["history"]]
    return (
        status == 200
        and item["attempts"] == item["max_attempts"]
        and outcomes.count("retry") <= 1
        and set(outcomes) <= {"lost", "retry", "failed"}
    )


def test_crash_storm_ends_every_document_as_predicted(server_env, tmp_path):
    record = tmp_path / "calls.log"
    record.touch()
    seen = tmp_path / "seen"
    seen.mkdir()
    postgres = server_env["DATABASE_URL"].startswith("postgres")
    env = {
        **server_env,
        "DOCQUEUE_PROCESS_ISOLATION": "none",
        "DOCQUEUE_PROCESSOR": "tests.e2e.processors:storm_extract",
        "DOCQUEUE_LEASE_SECONDS": str(LEASE_SECONDS),
        "DOCQUEUE_RETRY_BASE_SECONDS": "0.1",
        "DOCQUEUE_RETRY_MAX_SECONDS": "1",
        "DOCQUEUE_BATCH_SIZE": "5",
        "DOCQUEUE_ADMIN_PASSWORD": PASSWORD,
        RECORD_ENV: str(record),
        STORM_SEEN_ENV: str(seen),
        WORK_ENV: "0.3",
    }
    started = time.monotonic()
    server = Server(env, workers=2, log_path=tmp_path / "server.log").start()
    storm = Storm(server, env, tmp_path, workers=4 if postgres else 2)
    actions = threading.Thread(target=storm.act, name="actions", daemon=True)
    kills = threading.Thread(target=storm.kill, name="kills", daemon=True)
    try:
        # Paused while uploading, so that the storm meets a backlog: batches in
        # hand, items waiting behind them, when the kills come.
        assert server.request("POST", "/api/queue/pause", headers=ADMIN)[0] == 200
        actions.start()
        uploads = [
            threading.Thread(target=storm.upload, args=(part, 2), name=f"uploads-{part}")
            for part in range(2)
        ]
        for thread in uploads:
            thread.start()
        for thread in uploads:
            thread.join(timeout=PHASE_TIMEOUT_SECONDS)
        assert not any(thread.is_alive() for thread in uploads), "the uploads did not finish"
        assert server.request("POST", "/api/queue/resume", headers=ADMIN)[0] == 200
        kills.start()
        wait_for(
            lambda: work_left(server) <= max(5, DOCUMENTS * KILL_UNTIL_LEFT),
            "the storm to work through the backlog",
            PHASE_TIMEOUT_SECONDS,
        )
        storm.stop_actions.set()
        storm.stop_kills.set()
        for thread in (actions, kills):
            thread.join(timeout=30)
        stats = drain(server)
        documents = final_statuses(server)
        model = storm.model
        wrong = {
            document_id: (document["status"], model.expected(document_id))
            for document_id, document in documents.items()
            if document["status"] != model.expected(document_id)
        }
        # A document may fail for good when every attempt was lost to kills.
        failed_by_kills = {
            document_id
            for document_id, (status, _) in wrong.items()
            if status == "failed" and explained_failure(server, documents[document_id])
        }
        worker_exits = storm.stop_workers()
    finally:
        storm.stop_actions.set()
        storm.stop_kills.set()
        for worker in storm.workers:
            stop_worker(worker)
        server.stop()

    calls = read_calls(record)
    names = {document_id: name for name, document_id in model.ids.items()}
    cancel_times = {names[d]: times for d, times in model.cancel_times.items()}
    violations = processed_while_leased(calls, storm.kills, cancel_times)
    print(
        f"\ncrash storm ({'postgresql' if postgres else 'sqlite'}): {len(documents)} documents, "
        f"{len(storm.kills)} kills "
        f"({sum(kind == 'gunicorn' for *_, kind in storm.kills)} gunicorn workers), "
        f"{model.reprocesses} reprocesses, {model.cancels} cancels "
        f"({model.cancels_refused} refused: already finished), "
        f"{sum(len(c) for c in calls.values())} processor calls "
        f"({sum(c.end is None for cs in calls.values() for c in cs)} killed), "
        f"{len(violations)} processed twice under a lease, {len(wrong)} in a wrong state "
        f"({len(failed_by_kills)} failed after losing every attempt to kills), "
        f"{storm.connection_errors} requests broken by kills; "
        f"{time.monotonic() - started:.1f} s"
    )
    assert not storm.errors, storm.errors[:10]
    assert len(documents) == DOCUMENTS
    assert stats["pending"] == stats["in_progress"] == 0, stats
    assert not violations, violations[:10]
    assert not {d: wrong[d] for d in wrong if d not in failed_by_kills}, wrong
    assert worker_exits == [0] * len(worker_exits)
