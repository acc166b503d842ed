"""Run a processor on one document, in this process or in a sandbox under caps.

Native parsers can abort the whole process or eat gigabytes on a hostile file
(RESEARCH.md §0.8), so production runs every document in a sandbox: a
long-lived child process with an address-space cap (``RLIMIT_AS``) that runs
documents one at a time, each under a wall-clock timeout (sandbox.py).

Each calling thread (a worker thread, a gunicorn scheduler thread) has a
sandbox of its own, started with its first document and replaced when it dies,
times out, is cancelled, has grown or is worn out. A forked copy of this process
(a gunicorn worker) never uses its parent's sandboxes, and every sandbox is
killed when this process exits.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from .errors import PermanentProcessingError, ProcessingCancelled, TransientProcessingError
from .options import OCR_AUTO, ProcessingOptions, processing_options
from .sandbox import (
    CANCELLED,
    MEMORY_CAP,
    PERMANENT,
    TIMED_OUT,
    Caps,
    Job,
    Sandbox,
    exit_code_for_memory_cap,
    load_processor,
    split_processor_name,
)

DEFAULT_PROCESSOR = "docqueue_app.processing:extract"
ISOLATION_MODES = ("subprocess", "none")


def run_processor(
    content: bytes,
    filename: str,
    content_type: str,
    *,
    processor: str = DEFAULT_PROCESSOR,
    isolation: str = "subprocess",
    memory_mb: int = 1024,
    timeout_seconds: float = 300,
    ocr: str = OCR_AUTO,
    cancel: threading.Event | None = None,
) -> dict:
    """Call ``processor`` (``"module:callable"``) as ``f(content, filename, content_type)``.

    ``ocr`` (DOCQUEUE_OCR) reaches the built-in extractor through
    ``options.current_options()``, set around the call wherever it runs.

    ``isolation="none"`` calls it in this process and lets its exceptions through.
    ``isolation="subprocess"`` calls it in this thread's sandbox, a child process
    whose address space is capped at ``memory_mb`` MiB (the whole child,
    interpreter included), and kills the sandbox after ``timeout_seconds``.
    Outcomes:

    - the processor's result is returned;
    - ``PermanentProcessingError`` from the processor is raised again, same message;
    - the memory cap exceeded (``MemoryError``, or the sandbox dying with evidence
      of the cap during this document: an allocation failure on its stderr, or its
      address space at the cap) raises
      ``PermanentProcessingError("memory cap of N MB exceeded ...")``;
    - the timeout, a sandbox that dies otherwise (the error names the signal or exit
      code), or any other exception of the processor raise
      ``TransientProcessingError`` saying which.

    A failure is this document's only: the next one runs in a fresh sandbox if this
    one was killed or died.

    ``cancel``: once set, the document's outcome no longer matters. The sandbox is
    killed at once (within about 50 ms); without isolation the processor cannot be
    stopped and its result or error is dropped when it returns. Either way, and
    when it is set before the call, ``ProcessingCancelled`` is raised.

    The sandbox ignores SIGINT and SIGTERM: only this module kills it. Safe to call
    from several threads at once and from forked workers (gunicorn).
    """
    module_name, attribute = split_processor_name(processor)
    if isolation not in ISOLATION_MODES:
        raise ValueError(f"isolation must be one of {ISOLATION_MODES}, not {isolation!r}")
    options = ProcessingOptions(ocr=ocr)
    _raise_if_cancelled(cancel)
    if isolation == "none":
        processor_function = load_processor(module_name, attribute)
        with processing_options(options):
            return _run_in_this_process(processor_function, content, filename, content_type, cancel)
    job = (processor, content, filename, content_type, options)
    return _run_in_sandbox(job, Caps(memory_mb, timeout_seconds), cancel)


def _raise_if_cancelled(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise ProcessingCancelled("processing was cancelled")


def _run_in_this_process(
    processor: Callable[[bytes, str, str], dict],
    content: bytes,
    filename: str,
    content_type: str,
    cancel: threading.Event | None,
) -> dict:
    # Nothing stops a processor running on this thread: a cancelled document's
    # outcome, result or error, is dropped when it comes.
    try:
        result = processor(content, filename, content_type)
    except Exception:
        _raise_if_cancelled(cancel)
        raise
    _raise_if_cancelled(cancel)
    return result


# --- a document in this thread's sandbox ------------------------------------------------


def _run_in_sandbox(job: Job, caps: Caps, cancel: threading.Event | None) -> dict:
    sandbox = _sandbox_of_this_thread(caps)
    outcome = None
    try:
        outcome = sandbox.run(job, cancel)
    finally:
        exit_code = _keep_or_retire(sandbox, outcome)
    if outcome is CANCELLED:
        raise ProcessingCancelled("processing was cancelled")
    _raise_if_cancelled(cancel)  # cancelled as the outcome came: dropped all the same
    if outcome is TIMED_OUT:
        raise TransientProcessingError(f"timed out after {caps.timeout_seconds:g} s")
    if outcome is None:
        raise _error_for_death_without_outcome(exit_code, sandbox.memory_cap_evidence(), caps)
    return _result_or_error(outcome, caps)


def _keep_or_retire(sandbox: Sandbox, outcome: Any) -> int | None:
    """Keep the sandbox for the next document if it may serve it, or end it: its exit code."""
    # Without an outcome (it died, timed out, was cancelled, or this thread was
    # interrupted), the sandbox is in an unknown state: it goes, whatever it holds.
    if isinstance(outcome, tuple) and sandbox.reusable():
        return None
    return _retire(sandbox)


def _result_or_error(outcome: tuple, caps: Caps) -> dict:
    if outcome[0] == "ok":
        return outcome[1]
    _, kind, message = outcome
    if kind == MEMORY_CAP:
        raise PermanentProcessingError(f"memory cap of {caps.memory_mb} MB exceeded (MemoryError)")
    if kind == PERMANENT:
        raise PermanentProcessingError(message)
    raise TransientProcessingError(message)


def _error_for_death_without_outcome(
    exit_code: int | None, evidence: str | None, caps: Caps
) -> Exception:
    if exit_code_for_memory_cap(exit_code):
        return PermanentProcessingError(
            f"memory cap of {caps.memory_mb} MB exceeded (MemoryError while sending the result)"
        )
    if exit_code is not None and exit_code < 0:
        ending = f"signal {_signal_name(-exit_code)}"
    else:
        ending = f"exit code {exit_code}"
    if evidence is not None:
        return PermanentProcessingError(
            f"memory cap of {caps.memory_mb} MB exceeded "
            f"(the processing process died ({ending}) {evidence})"
        )
    return TransientProcessingError(f"processing process died ({ending}) without a result")


def _signal_name(signal_number: int) -> str:
    try:
        return signal.Signals(signal_number).name
    except ValueError:
        return str(signal_number)


# --- the sandboxes of this process: one per calling thread -------------------------------

# Every sandbox not yet ended, for _kill_running_children; and which thread uses which.
# A sandbox is ended and then leaves _live under the lock before its descriptors close.
_SANDBOXES_LOCK = threading.Lock()
_live: set[Sandbox] = set()
_by_thread: dict[threading.Thread, Sandbox] = {}


def _sandbox_of_this_thread(caps: Caps) -> Sandbox:
    """This thread's sandbox for these caps, started now if it has none."""
    thread = threading.current_thread()
    with _SANDBOXES_LOCK:
        # A thread that ended leaves its sandbox behind: whoever comes next retires it.
        abandoned = [_by_thread.pop(other) for other in list(_by_thread) if not other.is_alive()]
        sandbox = _by_thread.get(thread)
    for other in abandoned:
        _retire(other)
    if sandbox is not None and sandbox.owner_pid != os.getpid():
        # Never used nor ended here: the parent's (_forget_inherited_sandboxes drops them).
        sandbox = None
    elif sandbox is not None and not (sandbox.caps == caps and sandbox.alive()):
        _retire(sandbox)
        sandbox = None
    if sandbox is None:
        sandbox = _start_sandbox(caps)
        with _SANDBOXES_LOCK:
            _by_thread[thread] = sandbox
    return sandbox


def _start_sandbox(caps: Caps) -> Sandbox:
    sandbox = Sandbox(caps)
    with _SANDBOXES_LOCK:
        _live.add(sandbox)  # killable at exit before it runs anything
    sandbox.let_go()
    return sandbox


def _retire(sandbox: Sandbox) -> int | None:
    """End the sandbox (kill it unless it is dying already); its exit code."""
    with _SANDBOXES_LOCK:
        for thread, used in list(_by_thread.items()):
            if used is sandbox:
                del _by_thread[thread]
    try:
        return sandbox.end()
    finally:
        with _SANDBOXES_LOCK:
            _live.discard(sandbox)
        sandbox.close()


def _kill_running_children() -> None:
    """At exit: kill every sandbox, idle or busy.

    multiprocessing's own exit handler, which runs after this one, would send them
    SIGTERM, which they ignore, then wait for them.
    """
    # Under the lock: a sandbox leaves the set before its pidfd is closed.
    with _SANDBOXES_LOCK:
        for sandbox in _live:
            sandbox.kill_at_exit()


atexit.register(_kill_running_children)


def _forget_inherited_sandboxes() -> None:
    """Runs in a forked copy of this process (a gunicorn worker): its parent's are not its own."""
    global _SANDBOXES_LOCK
    _SANDBOXES_LOCK = threading.Lock()  # another thread may have held it at the fork
    for sandbox in _live:
        sandbox.forget_in_forked_copy()
    _live.clear()
    _by_thread.clear()


os.register_at_fork(after_in_child=_forget_inherited_sandboxes)
