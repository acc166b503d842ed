"""process_document_queue and the standalone worker: claims, outcomes, isolation, SIGTERM."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from docqueue_app.models import Document, QueueItem, db, utcnow
from docqueue_app.queue import DocumentQueueService, process_document_queue
from docqueue_app.queue import worker as worker_module
from tests.e2e.server import BIN, ROOT
from tests.helpers import backend_name, execute_sql, statements_run, wait_until

SAMPLE = "tests.processing.sample_processors"


def submit(app, data: bytes, name: str = "doc.txt", priority: int = 5) -> int:
    with app.app_context():
        document, _ = DocumentQueueService().submit_document(name, data, "text/plain", priority)
        return document.id


def status_of(app, document_id: int) -> Document:
    with app.app_context(), Session(db.engine) as session:
        document = session.get(Document, document_id)
        session.expunge(document)
        return document


def test_a_pass_processes_due_items_and_reports_counts(app):
    ids = [submit(app, f"words number {n}".encode(), f"{n}.txt") for n in range(3)]
    with app.app_context():
        assert process_document_queue() == {
            "processed": 3,
            "completed": 3,
            "failed": 0,
            "retried": 0,
        }
        assert process_document_queue()["processed"] == 0
    document = status_of(app, ids[0])
    assert (document.status, document.word_count, document.char_count) == ("completed", 3, 14)


def test_a_postgresql_claim_brings_the_bytes_of_small_documents(app, monkeypatch):
    # A claim of 2 reads bytes of up to LOAD_GROUP_BYTES // 2 = 32 with the claim.
    monkeypatch.setattr(worker_module, "LOAD_GROUP_BYTES", 64)
    small = submit(app, b"a few words", "small.txt")
    large = submit(app, b"many more words " * 10, "large.txt")

    with statements_run(app) as run, app.app_context():
        assert process_document_queue(limit=2, look_first=False)["completed"] == 2

    reads = [
        statement
        for statement, _ in run
        if statement.lstrip().startswith("SELECT") and "document_contents" in statement
    ]
    # PostgreSQL reads only the large one on its own; SQLite reads every size and
    # the small bytes first, then the large one.
    assert len(reads) == (1 if backend_name(app) == "postgresql" else 2)
    assert status_of(app, small).word_count == 3
    assert status_of(app, large).word_count == 30


@pytest.mark.parametrize("with_the_claim", [True, False], ids=["with-the-claim", "read-after"])
def test_the_processor_gets_every_byte_as_uploaded(make_app, monkeypatch, with_the_claim):
    # PostgreSQL sends the claim's rows in binary; documents too large to come with
    # the claim are read after it. Both must hand over the bytes untouched.
    monkeypatch.setattr(worker_module, "LOAD_GROUP_BYTES", 1 << 20 if with_the_claim else 64)
    app = make_app(PROCESSOR=f"{SAMPLE}:report_digest")
    data = bytes(range(256)) * 3 + b"\x00\\x00\r\n" + bytes(range(255, -1, -1))
    document_id = submit(app, data, "every-byte.bin")
    with app.app_context():
        assert process_document_queue(limit=2, look_first=False)["completed"] == 1
    with app.app_context(), Session(db.engine) as session:
        text = session.get(Document, document_id).text
    assert text == hashlib.sha256(data).hexdigest()


def test_a_claim_builds_no_orm_objects(app):
    # Loading a QueueItem per claimed row cost twice the CPU of the claim itself
    # (31 µs a row against 14, claims of 100): a claim returns plain ClaimedItems.
    for n in range(3):
        submit(app, f"doc {n}".encode(), f"{n}.txt")
    loaded = []

    def record(item, _context):
        loaded.append(item)

    event.listen(QueueItem, "load", record)
    try:
        with app.app_context():
            items = DocumentQueueService().claim_due_items(3, "w", look_first=False)
    finally:
        event.remove(QueueItem, "load", record)

    assert loaded == []
    assert [item.status for item in items] == ["in_progress"] * 3


def test_limit_caps_the_items_claimed(app):
    for n in range(3):
        submit(app, f"doc {n}".encode(), f"{n}.txt")
    with app.app_context():
        assert process_document_queue(limit=2)["processed"] == 2
        assert DocumentQueueService().get_queue_stats()["pending"] == 1


def test_transient_errors_retry_and_permanent_ones_fail(make_app):
    app = make_app(PROCESSOR=f"{SAMPLE}:raise_runtime_error")
    doc_id = submit(app, b"anything")
    with app.app_context():
        assert process_document_queue()["retried"] == 1
    assert status_of(app, doc_id).status == "pending"

    app = make_app()
    broken = submit(app, b"{not json", "broken.json")
    with app.app_context(), Session(db.engine) as session:
        session.get(Document, broken).content_type = "application/json"
        session.commit()
    with app.app_context():
        assert process_document_queue()["failed"] == 1
    failed = status_of(app, broken)
    assert failed.status == "failed"
    assert "JSON" in failed.error


@pytest.mark.parametrize(
    ("processor", "permanent", "words"),
    [
        ("exit_abruptly", False, "exit code 3"),
        ("raise_memory_error", True, "memory"),
    ],
)
def test_isolated_processor_crashes_fail_only_the_document(make_app, processor, permanent, words):
    app = make_app(
        PROCESSOR=f"{SAMPLE}:{processor}",
        PROCESS_ISOLATION="subprocess",
        PROCESS_MEMORY_MB=512,
        MAX_ATTEMPTS=2,
    )
    doc_id = submit(app, b"hostile")
    with app.app_context():
        result = process_document_queue()
    assert result["failed" if permanent else "retried"] == 1
    document = status_of(app, doc_id)
    assert document.status == ("failed" if permanent else "pending")
    with app.app_context():
        item = db.session.scalars(db.select(QueueItem)).one()
        assert words in item.last_error


def test_sigterm_finishes_the_document_in_hand_and_releases_the_rest(app, database_url, tmp_path):
    ids = [submit(app, f"slow {n}".encode(), f"{n}.txt") for n in range(4)]
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DOCQUEUE_SECRET_KEY": "t",
        "DOCQUEUE_PROCESS_ISOLATION": "none",
        "DOCQUEUE_PROCESSOR": "tests.e2e.processors:sleep_briefly",
        "PYTHONPATH": str(ROOT),  # the processor lives in the tests package
    }
    worker = subprocess.Popen(
        [str(BIN / "docqueue"), "queue", "worker", "--batch-size", "4"],
        cwd=ROOT,
        env=env,
        stderr=open(tmp_path / "worker.log", "wb"),  # noqa: SIM115
    )
    try:
        wait_until(lambda: any(status_of(app, i).status == "processing" for i in ids), 30)
        time.sleep(0.3)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    statuses = sorted(status_of(app, i).status for i in ids)
    assert statuses.count("completed") >= 1
    assert "processing" not in statuses
    with app.app_context():
        pending = db.session.scalars(db.select(QueueItem).where(QueueItem.status == "pending"))
        assert all(item.attempts == 0 for item in pending)


def test_a_lone_surrogate_in_a_result_is_stored_and_the_batch_completes(make_app):
    # No back end can store a lone surrogate as UTF-8 text. (The built-in extractors
    # no longer make one: a UTF-7 declaration, which could spell it, is ignored.)
    app = make_app(PROCESSOR="tests.e2e.processors:misbehaving_results")
    hostile = submit(app, b"lone-surrogate doc", "surrogate.txt")
    others = [submit(app, f"plain text {n}".encode(), f"{n}.txt") for n in range(3)]
    with app.app_context():
        assert process_document_queue()["completed"] == 4
    assert {status_of(app, i).status for i in others} == {"completed"}
    with app.app_context():
        text = db.session.get(Document, hostile).text
    assert "\ufffd hello" in text


def test_results_of_the_wrong_shape_fail_only_their_own_documents(make_app):
    app = make_app(PROCESSOR="tests.e2e.processors:misbehaving_results")
    bad = [
        submit(app, f"{word} doc".encode(), f"{word}.txt")
        for word in ("not-a-dict", "object-metadata")
    ]
    nul = submit(app, b"nul doc", "nul.txt")
    good = [submit(app, f"fine doc {n}".encode(), f"{n}.txt") for n in range(3)]
    with app.app_context():
        counts = process_document_queue()
    assert (counts["completed"], counts["failed"], counts["retried"]) == (4, 2, 0)
    for document_id in bad:
        document = status_of(app, document_id)
        assert document.status == "failed"
        assert document.error.startswith("invalid processor result")
    assert {status_of(app, i).status for i in good} == {"completed"}
    with app.app_context():
        assert db.session.get(Document, nul).text == "beforeafter"


def test_cancelling_a_running_item_kills_its_child_and_the_pass_goes_on(make_app, tmp_path):
    app = make_app(
        PROCESSOR=f"{SAMPLE}:sleep_forever",
        PROCESS_ISOLATION="subprocess",
        POLL_INTERVAL=0.1,
        PROCESS_TIMEOUT_SECONDS=120,
    )
    doc_id = submit(app, b"a document nobody wants any more")
    outcome: dict = {}

    def run_pass() -> None:
        with app.app_context():
            outcome.update(process_document_queue())

    worker = threading.Thread(target=run_pass)
    started = time.monotonic()
    worker.start()
    wait_until(lambda: status_of(app, doc_id).status == "processing", 30)
    with app.app_context():
        item = db.session.scalars(db.select(QueueItem)).one()
        DocumentQueueService().cancel_item(item.id)
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert time.monotonic() - started < 60  # not the 120 s time cap: the child was killed
    assert outcome == {"processed": 0, "completed": 0, "failed": 0, "retried": 0}
    assert status_of(app, doc_id).status == "cancelled"
    with app.app_context():
        item = db.session.scalars(db.select(QueueItem)).one()
        assert [(h.outcome, h.error) for h in item.history] == [("cancelled", "cancelled")]


@pytest.mark.parametrize(
    ("look_every", "looks"),
    [(60.0, [False, True, False, False]), (0.0, [False, True, True, True])],
    ids=["within-an-interval", "interval-passed"],
)
def test_a_busy_loop_polls_between_full_batches_once_per_interval(app, look_every, looks):
    # A full batch means more is likely due: the next pass claims at once, sparing
    # a round trip, unless the loop has not polled (and so rescued) for an interval.
    from docqueue_app.queue.notify import WakeSignal
    from docqueue_app.queue.runner import work_until_idle

    ids = [submit(app, f"busy work {n}".encode(), f"{n}.txt") for n in range(6)]
    seen = []

    def run_pass(look_first: bool) -> int:
        seen.append(look_first)
        with app.app_context():
            return process_document_queue(limit=2, look_first=look_first)["processed"]

    work_until_idle(run_pass, WakeSignal(), 2, threading.Event(), True, look_every)

    assert seen == looks
    assert {status_of(app, doc).status for doc in ids} == {"completed"}


def bookkeeping_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "docqueue-outcomes"]


def test_passes_of_one_thread_share_one_bookkeeping_thread_that_ends_with_it(app, monkeypatch):
    monkeypatch.setattr(worker_module, "OWNER_CHECK_SECONDS", 0.05)
    ids = [submit(app, f"pass work {n}".encode(), f"{n}.txt") for n in range(4)]
    seen: list[set[threading.Thread]] = []

    def claim_loop() -> None:
        for _ in range(2):
            with app.app_context():
                assert process_document_queue(limit=2, look_first=False)["completed"] == 2
            seen.append(set(bookkeeping_threads()))

    before = set(bookkeeping_threads())
    loop = threading.Thread(target=claim_loop)
    loop.start()
    loop.join()

    [first, second] = [threads - before for threads in seen]
    assert len(first) == 1 and second == first
    [bookkeeper] = first
    bookkeeper.join(timeout=10)
    assert not bookkeeper.is_alive()
    assert {status_of(app, doc).status for doc in ids} == {"completed"}


def test_a_forked_process_gets_a_bookkeeping_thread_of_its_own(app):
    # Threads do not survive a fork (gunicorn forks its workers): a pass in the
    # child must not hand its outcomes to the parent's bookkeeper, which is gone.
    submit(app, b"before the fork", "parent.txt")
    with app.app_context():
        assert process_document_queue(look_first=False)["completed"] == 1
    child_doc = submit(app, b"after the fork", "child.txt")
    pid = os.fork()
    if pid == 0:  # the child: exit at once, whatever happens, with what it found
        code = 1
        signal.alarm(30)  # a pass waiting on a bookkeeper that is gone would hang
        try:
            with app.app_context():
                db.engine.dispose(close=False)  # the parent's connections stay the parent's
                code = 0 if process_document_queue(look_first=False)["completed"] == 1 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert status_of(app, child_doc).status == "completed"


def test_a_busy_loop_rescues_a_dead_workers_item_without_waiting_for_idle(app):
    # The first pass after a wake claims without polling (and so without rescuing);
    # the passes after it poll again, so a lease that ran out is rescued while the
    # loop is still busy, not only once it goes idle or at the next maintenance.
    from docqueue_app.queue.notify import WakeSignal
    from docqueue_app.queue.runner import work_until_idle

    lost = submit(app, b"its worker died", "lost.txt")
    with app.app_context():
        [item] = DocumentQueueService().claim_due_items(1, "dead-worker")
        execute_sql(
            app,
            "UPDATE queue_items SET lease_expires_at = :past WHERE id = :id",
            past=utcnow() - timedelta(minutes=1),
            id=item.id,
        )
    for n in range(4):
        submit(app, f"busy work {n}".encode(), f"{n}.txt")

    def run_pass(look_first: bool) -> int:
        with app.app_context():
            return process_document_queue(limit=2, look_first=look_first)["processed"]

    work_until_idle(run_pass, WakeSignal(), 2, threading.Event(), woken=True)

    assert status_of(app, lost).status == "completed"
