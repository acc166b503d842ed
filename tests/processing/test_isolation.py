"""run_processor: a fresh child per document under memory and time caps, and its outcomes."""

from __future__ import annotations

import os
import resource
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from docqueue_app.processing import (
    PermanentProcessingError,
    TransientProcessingError,
    run_processor,
)

from .corpus import read, requires_corpus

PDF = "application/pdf"
SAMPLES = "tests.processing.sample_processors"
MEMORY_MB = 512


def run_isolated(
    processor: str,
    content: bytes = b"some text",
    content_type: str = "text/plain",
    *,
    timeout_seconds: float = 60,
) -> dict:
    return run_processor(
        content,
        "document",
        content_type,
        processor=processor,
        isolation="subprocess",
        memory_mb=MEMORY_MB,
        timeout_seconds=timeout_seconds,
    )


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
