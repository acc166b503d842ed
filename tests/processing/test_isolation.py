"""run_processor: documents in sandbox child processes under memory and time caps, and outcomes."""

from __future__ import annotations

import json
import multiprocessing.forkserver
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from docqueue_app.processing import (
    PermanentProcessingError,
    ProcessingCancelled,
    TransientProcessingError,
    run_processor,
)
from docqueue_app.processing import isolation as isolation_module

from .corpus import read, requires_corpus

PDF = "application/pdf"
SAMPLES = "tests.processing.sample_processors"
MEMORY_MB = 512
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# How long a test waits for something that takes milliseconds: a loaded machine is slow.
PATIENCE_SECONDS = 60


def run_isolated(
    processor: str,
    content: bytes = b"some text",
    content_type: str = "text/plain",
    *,
    timeout_seconds: float = 60,
    cancel: threading.Event | None = None,
    isolation: str = "subprocess",
) -> dict:
    return run_processor(
        content,
        "document",
        content_type,
        processor=processor,
        isolation=isolation,
        memory_mb=MEMORY_MB,
        timeout_seconds=timeout_seconds,
        cancel=cancel,
    )


def fork_server_pid() -> int:
    pid = multiprocessing.forkserver._forkserver._forkserver_pid
    assert pid is not None, "no fork server is running"
    return pid


def wait_for_pid_file(path: Path) -> int:
    """The pid a sample processor wrote to ``path`` (written whole, by a rename)."""
    deadline = time.monotonic() + PATIENCE_SECONDS
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    return int(path.read_text())


def has_exited(pidfd: int, timeout: float = 0) -> bool:
    """A pidfd reads as ready once its process has ended (a zombie included)."""
    return bool(select.select([pidfd], [], [], timeout)[0])


@contextmanager
def watching_child(pid_file: Path, then: Callable[[], None]) -> Iterator[dict]:
    """In a helper thread: wait for the child's pid, open a pidfd of it, call ``then``.

    Yields a dict that gets ``pidfd`` and ``then_at`` (monotonic time ``then`` was called).
    Whatever happens, the child is killed and the pidfd closed afterwards.
    """
    seen: dict = {}

    def watch() -> None:
        seen["pidfd"] = os.pidfd_open(wait_for_pid_file(pid_file))
        seen["then_at"] = time.monotonic()
        then()

    helper = threading.Thread(target=watch, daemon=True)
    helper.start()
    try:
        yield seen
    finally:
        helper.join(PATIENCE_SECONDS)
        if "pidfd" in seen:
            if not has_exited(seen["pidfd"]):
                signal.pidfd_send_signal(seen["pidfd"], signal.SIGKILL)  # never leak a child
            os.close(seen["pidfd"])


def flate_bomb_pdf(inflated_bytes: int = 1_000_000_000) -> bytes:
    """A one-page PDF whose FlateDecode content stream inflates to ``inflated_bytes`` spaces."""
    compressor = zlib.compressobj(9)
    chunk = b" " * (16 * 1024 * 1024)
    pieces = [
        compressor.compress(chunk[: min(len(chunk), inflated_bytes - done)])
        for done in range(0, inflated_bytes, len(chunk))
    ]
    stream = b"".join(pieces) + compressor.flush()

    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_offset = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref_offset,
    )
    return bytes(out)


@pytest.fixture(scope="module")
def pdf_bomb() -> bytes:
    return flate_bomb_pdf()


# --- normal results ----------------------------------------------------------------


@requires_corpus
def test_corpus_pdf_is_extracted_in_a_child_exactly_as_in_process() -> None:
    content = read("pdf/pdflatex-4-pages.pdf")
    options = {"processor": "docqueue_app.processing:extract", "memory_mb": MEMORY_MB}

    isolated = run_processor(
        content, "4.pdf", PDF, isolation="subprocess", timeout_seconds=60, **options
    )
    in_process = run_processor(
        content, "4.pdf", PDF, isolation="none", timeout_seconds=60, **options
    )

    assert isolated == in_process
    assert isolated["page_count"] == 4
    assert "Hello, here is" in isolated["text"]


def test_processor_from_the_tests_package_is_importable_in_the_child() -> None:
    result = run_isolated(f"{SAMPLES}:echo_text", "héllo".encode())

    assert result["text"] == "héllo"
    assert result["metadata"] == {"content_type": "text/plain"}


def test_defaults_name_the_built_in_extractor() -> None:
    result = run_processor(b"# Notes\n", "notes.md", "text/markdown", memory_mb=MEMORY_MB)

    assert result["title"] == "Notes"


def test_a_large_result_comes_back_whole() -> None:
    content = b"0123456789" * 5_000_000  # 50 MB of text

    result = run_isolated(f"{SAMPLES}:echo_text", content)

    assert len(result["text"]) == len(content)


# --- failures ------------------------------------------------------------------------


def test_child_that_exits_without_a_result_is_transient() -> None:
    with pytest.raises(TransientProcessingError, match=r"died \(exit code 3\) without a result"):
        run_isolated(f"{SAMPLES}:exit_abruptly")


def test_memory_error_is_the_permanent_memory_cap_failure() -> None:
    with pytest.raises(PermanentProcessingError, match=f"memory cap of {MEMORY_MB} MB exceeded"):
        run_isolated(f"{SAMPLES}:raise_memory_error")


def test_allocating_beyond_the_cap_is_the_permanent_memory_cap_failure() -> None:
    with pytest.raises(PermanentProcessingError, match=f"memory cap of {MEMORY_MB} MB exceeded"):
        run_isolated(f"{SAMPLES}:allocate_gigabytes")


def test_child_running_past_the_timeout_is_killed_and_transient() -> None:
    started = time.monotonic()

    with pytest.raises(TransientProcessingError, match=r"timed out after 1 s"):
        run_isolated(f"{SAMPLES}:sleep_forever", timeout_seconds=1)

    assert time.monotonic() - started < 10


def test_any_other_exception_is_transient_with_its_type() -> None:
    with pytest.raises(TransientProcessingError, match=r"^RuntimeError: simulated processor bug$"):
        run_isolated(f"{SAMPLES}:raise_runtime_error")


def test_unknown_processor_module_is_transient() -> None:
    with pytest.raises(TransientProcessingError, match="ModuleNotFoundError"):
        run_isolated("no_such_module_anywhere:extract")


@requires_corpus
def test_permanent_error_of_the_processor_keeps_its_message() -> None:
    content = read("pdf/damaged-poppler-395-fuzzed.pdf")

    with pytest.raises(PermanentProcessingError, match=r"^damaged PDF: PDFium cannot parse"):
        run_isolated("docqueue_app.processing:extract", content, PDF)


def test_pdf_decompression_bomb_hits_the_cap_and_the_parent_is_unharmed(pdf_bomb: bytes) -> None:
    peak_rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    with pytest.raises(PermanentProcessingError, match=f"memory cap of {MEMORY_MB} MB exceeded"):
        run_isolated("docqueue_app.processing:extract", pdf_bomb, PDF, timeout_seconds=120)

    # ru_maxrss is in KiB on Linux; the gigabyte was inflated in the child only.
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_rss_before) / 1024
    assert growth_mib < 100
    assert run_isolated(f"{SAMPLES}:echo_text", b"still alive")["text"] == "still alive"


def test_pdf_bomb_is_well_formed_so_only_its_size_is_the_problem() -> None:
    small = flate_bomb_pdf(inflated_bytes=1_000_000)

    result = run_isolated("docqueue_app.processing:extract", small, PDF)

    assert result["page_count"] == 1


# --- in-process mode ---------------------------------------------------------------


def test_isolation_none_runs_in_this_process_and_lets_errors_through() -> None:
    def run_here(processor: str) -> dict:
        return run_processor(
            b"x",
            "x",
            "text/plain",
            processor=processor,
            isolation="none",
            memory_mb=MEMORY_MB,
            timeout_seconds=1,
        )

    assert run_here(f"{SAMPLES}:echo_text")["text"] == "x"
    with pytest.raises(RuntimeError, match="simulated processor bug"):
        run_here(f"{SAMPLES}:raise_runtime_error")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"processor": "no-colon-here", "isolation": "none"}, "module:callable"),
        ({"processor": f"{SAMPLES}:echo_text", "isolation": "thread"}, "isolation must be"),
    ],
)
def test_bad_settings_are_refused_at_once(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_processor(b"x", "x", "text/plain", memory_mb=MEMORY_MB, timeout_seconds=1, **options)


# --- concurrency and forked workers ----------------------------------------------------


def test_many_threads_share_the_fork_server_and_each_gets_its_own_outcome() -> None:
    processors = ["echo_text", "exit_abruptly", "raise_memory_error", "raise_runtime_error"] * 6
    expected = {
        "echo_text": "ok",
        "exit_abruptly": "TransientProcessingError",
        "raise_memory_error": "PermanentProcessingError",
        "raise_runtime_error": "TransientProcessingError",
    }

    def outcome(name: str) -> tuple[str, str]:
        try:
            run_isolated(f"{SAMPLES}:{name}", name.encode())
        except (PermanentProcessingError, TransientProcessingError) as exc:
            return name, type(exc).__name__
        return name, "ok"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(outcome, processors))

    assert outcomes == [(name, expected[name]) for name in processors]


def test_a_forked_worker_starts_its_own_fork_server() -> None:
    # gunicorn forks its workers from a master that may have used the fork server.
    run_isolated(f"{SAMPLES}:echo_text")

    pid = os.fork()
    if pid == 0:  # the "worker"
        try:
            ok = run_isolated(f"{SAMPLES}:echo_text", b"from the worker")["text"]
            os._exit(0 if ok == "from the worker" else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert run_isolated(f"{SAMPLES}:echo_text", b"parent")["text"] == "parent"


def test_a_forked_worker_exiting_leaves_the_parents_children_alone(tmp_path: Path) -> None:
    # gunicorn forks its workers from the master; a worker's exit kills its own children.
    pid_file = tmp_path / "child.pid"
    cancel = threading.Event()

    def process_until_cancelled() -> None:
        with suppress(ProcessingCancelled):
            run_isolated(f"{SAMPLES}:report_pid_then_sleep", str(pid_file).encode(), cancel=cancel)

    document = threading.Thread(target=process_until_cancelled, daemon=True)
    document.start()
    pidfd = os.pidfd_open(wait_for_pid_file(pid_file))
    try:
        pid = os.fork()
        if pid == 0:  # the "worker", exiting
            isolation_module._kill_running_children()
            os._exit(0)
        os.waitpid(pid, 0)

        assert not has_exited(pidfd, timeout=1)  # a kill would show within milliseconds
    finally:
        cancel.set()
        document.join(PATIENCE_SECONDS)
        os.close(pidfd)


# --- signals from outside: a graceful stop must not cost the document in hand ---------------

# A worker in a process group of its own, as under systemd or in a terminal: it handles
# SIGTERM and SIGINT itself (a graceful stop) and processes the documents whose pid files
# are named on its command line, printing their texts (or errors) as JSON. Handlers, not
# SIG_IGN: an ignored signal stays ignored across exec, which would shield the fork
# server whatever the module under test does.
GROUP_WORKER = f"""
import json, signal, sys
from docqueue_app.processing import run_processor

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    texts = []
    for pid_file in sys.argv[1:]:
        try:
            result = run_processor(
                pid_file.encode(), "d", "text/plain", memory_mb={MEMORY_MB}, timeout_seconds=120,
                processor="{SAMPLES}:report_pid_then_wait_for_release",
            )
            texts.append(result["text"])
        except Exception as exc:
            texts.append(f"{{type(exc).__name__}}: {{exc}}")
    print(json.dumps(texts))
"""


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_to_the_process_group_spares_the_child_and_the_fork_server(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    first, second = tmp_path / "first.pid", tmp_path / "second.pid"
    worker = subprocess.Popen(
        [sys.executable, "-c", GROUP_WORKER, str(first), str(second)],
        cwd=PROJECT_ROOT,
        start_new_session=True,  # its own process group, which the fork server joins
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_pid_file(first)
        # `kill -TERM -- -PGID`, systemd stopping the unit, or Ctrl-C in the terminal:
        # the worker, the fork server and the child all get it. An unprotected child is
        # ended (SIGTERM) or interrupted (SIGINT) before it can see the release file.
        os.killpg(worker.pid, stop_signal)
        Path(f"{first}.release").touch()
        # The next document needs the fork server, which got the signal too.
        wait_for_pid_file(second)
        Path(f"{second}.release").touch()
        output, _ = worker.communicate(timeout=PATIENCE_SECONDS)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()

    assert json.loads(output) == ["released", "released"]
    assert worker.returncode == 0
    # The sandbox itself outlived the signal and served the next document.
    assert first.read_text() == second.read_text()


@pytest.mark.parametrize(
    "fork_server_signal", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name
)
def test_a_document_right_after_the_fork_server_was_signalled_still_runs(
    fork_server_signal: signal.Signals,
) -> None:
    run_isolated(f"{SAMPLES}:echo_text")  # the fork server is running

    os.kill(fork_server_pid(), fork_server_signal)

    # SIGTERM: ignored by the fork server. SIGKILL: it is started again.
    assert run_isolated(f"{SAMPLES}:echo_text", b"next")["text"] == "next"
    assert run_isolated(f"{SAMPLES}:echo_text", b"and next")["text"] == "and next"


def test_a_timed_out_child_is_killed_even_when_the_fork_server_died(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"

    def kill_fork_server() -> None:
        os.kill(fork_server_pid(), signal.SIGKILL)

    with watching_child(pid_file, then=kill_fork_server) as child:
        with pytest.raises(TransientProcessingError, match=r"timed out after 5 s"):
            run_isolated(
                f"{SAMPLES}:report_pid_then_sleep", str(pid_file).encode(), timeout_seconds=5
            )

        assert has_exited(child["pidfd"], timeout=PATIENCE_SECONDS)


# A worker that exits while a thread of it still processes a document.
EXITING_WORKER = f"""
import sys, threading
from docqueue_app.processing import run_processor

if __name__ == "__main__":
    threading.Thread(
        target=run_processor,
        args=(sys.argv[1].encode(), "d", "text/plain"),
        kwargs=dict(
            processor="{SAMPLES}:report_pid_then_sleep", memory_mb={MEMORY_MB}, timeout_seconds=300
        ),
        daemon=True,
    ).start()
    sys.stdin.read()  # until the test has seen the child
"""


def test_a_worker_exiting_mid_document_kills_the_child_and_does_not_wait(tmp_path: Path) -> None:
    # The child ignores the SIGTERM that multiprocessing sends daemonic children at exit,
    # and multiprocessing then waits for them: the worker must kill them itself.
    pid_file = tmp_path / "child.pid"
    worker = subprocess.Popen(
        [sys.executable, "-c", EXITING_WORKER, str(pid_file)],
        cwd=PROJECT_ROOT,
        stdin=subprocess.PIPE,
    )
    pidfd = os.pidfd_open(wait_for_pid_file(pid_file))
    try:
        worker.communicate(b"", timeout=PATIENCE_SECONDS)  # EOF on stdin: exit

        assert has_exited(pidfd, timeout=PATIENCE_SECONDS)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        if not has_exited(pidfd):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)


# --- what a child's death means: the memory cap only with evidence of it -------------------


@pytest.mark.parametrize(
    ("processor", "content", "signal_name"),
    [
        ("read_null_pointer", b"", "SIGSEGV"),
        ("kill_itself", b"SIGSEGV", "SIGSEGV"),
        ("kill_itself", b"SIGBUS", "SIGBUS"),
        ("kill_itself", b"SIGABRT", "SIGABRT"),
    ],
)
def test_a_crash_far_below_the_cap_is_transient_and_names_its_signal(
    processor: str, content: bytes, signal_name: str
) -> None:
    with pytest.raises(
        TransientProcessingError, match=rf"^processing process died \(signal {signal_name}\)"
    ):
        run_isolated(f"{SAMPLES}:{processor}", content)


def test_an_allocation_failure_reported_on_stderr_is_the_memory_cap() -> None:
    with pytest.raises(
        PermanentProcessingError,
        match=rf"^memory cap of {MEMORY_MB} MB exceeded \(.*SIGABRT.*std::bad_alloc",
    ):
        run_isolated(f"{SAMPLES}:abort_reporting_bad_alloc")


def test_the_pdf_bomb_is_the_memory_cap_because_its_address_space_reached_it(
    pdf_bomb: bytes,
) -> None:
    with pytest.raises(PermanentProcessingError) as raised:
        run_isolated("docqueue_app.processing:extract", pdf_bomb, PDF, timeout_seconds=120)

    # PDFium aborts without a word when an allocation fails (FX_OutOfMemoryTerminate):
    # the evidence is the address space the child had reached, sampled while it grew.
    assert str(raised.value).startswith(f"memory cap of {MEMORY_MB} MB exceeded (")
    assert "(signal SIGABRT) after its address space had reached" in str(raised.value)
    assert str(raised.value).endswith(f"MB of the {MEMORY_MB} MB cap)")


def test_the_childs_stderr_still_reaches_the_workers_stderr(
    capfd: pytest.CaptureFixture[str],
) -> None:
    run_isolated(f"{SAMPLES}:write_to_stderr", b"a line from the child\n")

    assert "a line from the child\n" in capfd.readouterr().err


# --- cancellation --------------------------------------------------------------------------


def test_processing_cancelled_is_neither_permanent_nor_transient() -> None:
    assert not issubclass(ProcessingCancelled, (PermanentProcessingError, TransientProcessingError))


def test_cancelling_kills_the_child_at_once(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    cancel = threading.Event()

    with watching_child(pid_file, then=cancel.set) as child:
        with pytest.raises(ProcessingCancelled):
            run_isolated(f"{SAMPLES}:report_pid_then_sleep", str(pid_file).encode(), cancel=cancel)
        cancelled_after = time.monotonic() - child["then_at"]

        assert has_exited(child["pidfd"])  # dead before run_processor returned
    assert cancelled_after < 5  # about 0.05 s; generous for a loaded machine


@pytest.mark.parametrize("isolation", ["subprocess", "none"])
def test_a_document_cancelled_before_it_starts_never_runs(tmp_path: Path, isolation: str) -> None:
    pid_file = tmp_path / "child.pid"
    cancel = threading.Event()
    cancel.set()

    with pytest.raises(ProcessingCancelled):
        run_isolated(
            f"{SAMPLES}:report_pid_then_wait_for_release",
            str(pid_file).encode(),
            cancel=cancel,
            isolation=isolation,
        )

    assert not pid_file.exists()


def test_without_isolation_a_cancelled_documents_result_is_dropped(tmp_path: Path) -> None:
    pid_file = tmp_path / "here.pid"  # the processor runs in this process: it writes our pid
    cancel = threading.Event()

    def cancel_then_release() -> None:
        wait_for_pid_file(pid_file)
        cancel.set()
        Path(f"{pid_file}.release").touch()

    helper = threading.Thread(target=cancel_then_release, daemon=True)
    helper.start()
    with pytest.raises(ProcessingCancelled):
        run_isolated(
            f"{SAMPLES}:report_pid_then_wait_for_release",
            str(pid_file).encode(),
            cancel=cancel,
            isolation="none",
        )
    helper.join(PATIENCE_SECONDS)


@pytest.mark.parametrize("isolation", ["subprocess", "none"])
def test_an_unset_cancel_event_changes_nothing(isolation: str) -> None:
    result = run_processor(
        b"fine",
        "d",
        "text/plain",
        processor=f"{SAMPLES}:echo_text",
        isolation=isolation,
        memory_mb=MEMORY_MB,
        timeout_seconds=60,
        cancel=threading.Event(),
    )

    assert result["text"] == "fine"
