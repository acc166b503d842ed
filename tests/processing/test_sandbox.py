"""Sandboxes: one long-lived child per calling thread serves many documents, and is
replaced when it dies, times out, is cancelled, has grown, or has served its quota."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from docqueue_app.processing import (
    PermanentProcessingError,
    ProcessingCancelled,
    TransientProcessingError,
)
from docqueue_app.processing import sandbox as sandbox_module

from .corpus import CORPUS_DIR, requires_corpus
from .test_isolation import (
    MEMORY_MB,
    PATIENCE_SECONDS,
    PROJECT_ROOT,
    SAMPLES,
    has_exited,
    run_isolated,
    watching_child,
)


def sandbox_pid(**options: object) -> int:
    """The pid of the sandbox that serves this thread's next document."""
    return int(run_isolated(f"{SAMPLES}:report_pid", **options)["text"])  # type: ignore[arg-type]


@contextmanager
def pidfd_of(pid: int) -> Iterator[int]:
    pidfd = os.pidfd_open(pid)
    try:
        yield pidfd
    finally:
        os.close(pidfd)


# --- many documents per sandbox ----------------------------------------------------------


def test_a_sandbox_serves_document_after_document() -> None:
    pids = [sandbox_pid() for _ in range(5)]

    assert len(set(pids)) == 1
    assert pids[0] != os.getpid()
    assert run_isolated(f"{SAMPLES}:echo_text", b"and the text")["text"] == "and the text"


def test_each_thread_has_a_sandbox_of_its_own() -> None:
    all_done = threading.Barrier(2)
    pids: dict[str, list[int]] = {}

    def process(name: str) -> None:
        pids[name] = [sandbox_pid() for _ in range(3)]
        all_done.wait(PATIENCE_SECONDS)  # both threads, and so their sandboxes, live till here

    threads = [threading.Thread(target=process, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE_SECONDS)

    assert len(set(pids["a"])) == 1
    assert len(set(pids["b"])) == 1
    assert pids["a"][0] != pids["b"][0]


def test_the_sandbox_of_a_thread_that_ended_is_ended_by_the_next_document() -> None:
    pids: list[int] = []
    thread = threading.Thread(target=lambda: pids.append(sandbox_pid()))
    thread.start()
    thread.join(PATIENCE_SECONDS)

    with pidfd_of(pids[0]) as pidfd:
        sandbox_pid()

        assert has_exited(pidfd)


def test_a_sandbox_is_replaced_after_its_quota_of_documents(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sandbox_module, "DOCUMENTS_PER_SANDBOX", 3)
    first = sandbox_pid(timeout_seconds=61)  # a fresh sandbox: caps of its own

    with pidfd_of(first) as pidfd:
        assert [sandbox_pid(timeout_seconds=61) for _ in range(2)] == [first, first]
        assert has_exited(pidfd)  # ended as soon as its third document was done
    later = [sandbox_pid(timeout_seconds=61) for _ in range(4)]

    assert later[:3] == [later[0]] * 3
    assert len({first, later[0], later[3]}) == 3


# --- a failure is its document's only -------------------------------------------------


def test_a_sandbox_that_died_is_replaced_and_the_next_document_succeeds() -> None:
    before = sandbox_pid()

    with pytest.raises(TransientProcessingError, match=r"died \(exit code 3\) without a result"):
        run_isolated(f"{SAMPLES}:exit_abruptly")

    assert sandbox_pid() != before


def test_a_sandbox_killed_while_idle_costs_no_document() -> None:
    # The OOM killer or an operator may pick an idle sandbox.
    before = sandbox_pid()
    with pidfd_of(before) as pidfd:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        assert has_exited(pidfd, timeout=PATIENCE_SECONDS)

    assert sandbox_pid() != before


def test_a_timeout_kills_the_sandbox_and_fails_only_its_document(tmp_path: Path) -> None:
    pid_file = tmp_path / "sandbox.pid"
    timeout = 5
    before = sandbox_pid(timeout_seconds=timeout)

    with watching_child(pid_file, then=lambda: None) as child:
        with pytest.raises(TransientProcessingError, match=rf"timed out after {timeout} s"):
            run_isolated(
                f"{SAMPLES}:report_pid_then_sleep",
                str(pid_file).encode(),
                timeout_seconds=timeout,
            )

        assert has_exited(child["pidfd"])
    assert int(pid_file.read_text()) == before  # the timed-out document ran in that sandbox
    assert sandbox_pid(timeout_seconds=timeout) != before


def test_cancelling_kills_the_sandbox_and_the_next_document_succeeds(tmp_path: Path) -> None:
    pid_file = tmp_path / "sandbox.pid"
    cancel = threading.Event()
    before = sandbox_pid()

    with watching_child(pid_file, then=cancel.set) as child:
        with pytest.raises(ProcessingCancelled):
            run_isolated(f"{SAMPLES}:report_pid_then_sleep", str(pid_file).encode(), cancel=cancel)

        assert has_exited(child["pidfd"])
    assert int(pid_file.read_text()) == before
    assert sandbox_pid() != before


@pytest.mark.parametrize("processor", ["raise_memory_error", "abort_reporting_bad_alloc"])
def test_the_memory_cap_fails_its_document_for_good_and_the_next_one_succeeds(
    processor: str,
) -> None:
    with pytest.raises(PermanentProcessingError, match=f"memory cap of {MEMORY_MB} MB exceeded"):
        run_isolated(f"{SAMPLES}:{processor}")

    assert run_isolated(f"{SAMPLES}:echo_text", b"next")["text"] == "next"


def test_other_errors_of_a_document_keep_the_sandbox() -> None:
    before = sandbox_pid()

    with pytest.raises(TransientProcessingError, match="simulated processor bug"):
        run_isolated(f"{SAMPLES}:raise_runtime_error")

    assert sandbox_pid() == before


# --- the memory cap is blamed on the document that reached it, never on the next ----------


def test_a_sandbox_that_came_close_to_the_cap_is_replaced_after_its_document() -> None:
    grown = int(run_isolated(f"{SAMPLES}:grow_close_to_the_cap")["text"])

    assert sandbox_pid() != grown


def test_a_crash_after_a_document_that_came_close_to_the_cap_is_a_crash() -> None:
    run_isolated(f"{SAMPLES}:grow_close_to_the_cap")

    with pytest.raises(
        TransientProcessingError, match=r"^processing process died \(signal SIGSEGV\)"
    ):
        run_isolated(f"{SAMPLES}:crash_after_a_moment")


def test_an_allocation_failure_written_by_an_earlier_document_does_not_blame_the_next() -> None:
    run_isolated(f"{SAMPLES}:write_to_stderr", b"std::bad_alloc\n")

    with pytest.raises(
        TransientProcessingError, match=r"^processing process died \(signal SIGSEGV\)"
    ):
        run_isolated(f"{SAMPLES}:kill_itself", b"SIGSEGV")


# --- processes: forked workers, exits, and what the worker never loads ----------------------


def test_a_forked_worker_never_uses_its_parents_sandbox() -> None:
    parents = sandbox_pid()
    read_end, write_end = os.pipe()

    pid = os.fork()
    if pid == 0:  # the "worker", as gunicorn forks it from its master
        try:
            os.write(write_end, str(sandbox_pid()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as from_worker:
        workers = int(from_worker.read() or 0)
    os.waitpid(pid, 0)

    assert workers not in (0, parents)
    assert sandbox_pid() == parents  # the worker's exit left the parent's sandbox alone


# A worker that processes one document, then exits with its sandbox idle.
IDLE_EXIT_WORKER = f"""
import sys
from docqueue_app.processing import run_processor

if __name__ == "__main__":
    result = run_processor(
        b"", "d", "text/plain", processor="{SAMPLES}:report_pid", memory_mb={MEMORY_MB}
    )
    print(result["text"], flush=True)
"""


def test_a_worker_exiting_with_an_idle_sandbox_kills_it_and_does_not_wait() -> None:
    # The sandbox ignores the SIGTERM that multiprocessing sends daemonic children at
    # exit, and multiprocessing then waits for them: the worker must kill them itself.
    worker = subprocess.run(
        [sys.executable, "-c", IDLE_EXIT_WORKER],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=PATIENCE_SECONDS,
    )

    assert worker.returncode == 0, worker.stderr
    sandbox = int(worker.stdout)
    with pytest.raises(ProcessLookupError):
        os.kill(sandbox, 0)


def test_a_sandbox_whose_worker_was_killed_exits_by_itself() -> None:
    # SIGKILL leaves no exit handler to kill it: it sees its parent's end of the pipe close.
    worker = subprocess.Popen(
        [sys.executable, "-c", IDLE_EXIT_WORKER + "    sys.stdin.read()\n"],
        cwd=PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        sandbox = int(worker.stdout.readline())
        with pidfd_of(sandbox) as pidfd:
            worker.kill()

            assert has_exited(pidfd, timeout=PATIENCE_SECONDS)
    finally:
        worker.kill()
        worker.wait()


# A worker whose sandbox is busy with a document that never ends (a processor blocked
# in a sleep or a read uses no CPU, so the sandbox's CPU-time backstop never fires).
BUSY_WORKER = f"""
import sys
from docqueue_app.processing import run_processor

if __name__ == "__main__":
    run_processor(
        sys.argv[1].encode(), "d", "text/plain",
        processor="{SAMPLES}:report_pid_then_sleep", memory_mb={MEMORY_MB}, timeout_seconds=3600,
    )
"""


def test_a_busy_sandbox_whose_worker_was_killed_exits_by_itself(tmp_path: Path) -> None:
    # It was left running for ever (an orphan holding up to the memory cap), and its
    # fork server with it: it reads its pipe only between documents.
    pid_file = tmp_path / "pid"
    worker = subprocess.Popen([sys.executable, "-c", BUSY_WORKER, str(pid_file)], cwd=PROJECT_ROOT)
    try:
        sandbox = wait_for_pid(pid_file, worker)
        with pidfd_of(sandbox) as pidfd:
            worker.kill()
            worker.wait()

            exited = has_exited(pidfd, timeout=PATIENCE_SECONDS)
            if not exited:
                os.kill(sandbox, signal.SIGKILL)
            assert exited
    finally:
        worker.kill()
        worker.wait()


def wait_for_pid(pid_file: Path, worker: subprocess.Popen) -> int:
    deadline = time.monotonic() + PATIENCE_SECONDS
    while not pid_file.exists():
        assert worker.poll() is None, "the worker ended before its sandbox started the document"
        assert time.monotonic() < deadline, "the sandbox never started the document"
        time.sleep(0.05)
    return int(pid_file.read_text())


# A worker that processes a PDF in a sandbox, then lists the parsers it has loaded itself.
PARSERS_WORKER = """
import json, sys
from docqueue_app.processing import run_processor

if __name__ == "__main__":
    with open(sys.argv[1], "rb") as pdf:
        result = run_processor(pdf.read(), "d.pdf", "application/pdf", memory_mb=1024)
    parsers = ("pypdfium2", "lxml", "selectolax", "charset_normalizer")
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in parsers)
    print(json.dumps({"page_count": result["page_count"], "loaded": loaded}))
"""


@requires_corpus
def test_the_worker_never_loads_pdfium_or_the_parsers_itself() -> None:
    worker = subprocess.run(
        [
            sys.executable,
            "-c",
            PARSERS_WORKER,
            str(CORPUS_DIR / "pdf" / "libreoffice-writer-trivial.pdf"),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=PATIENCE_SECONDS,
    )

    assert worker.returncode == 0, worker.stderr
    assert worker.stdout.strip() == '{"page_count": 1, "loaded": []}'
