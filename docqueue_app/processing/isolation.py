"""Run a processor on one document, in this process or in a fresh child under caps.

Native parsers can abort the whole process or eat gigabytes on a hostile file
(RESEARCH.md §0.8), so production runs every document in its own child process
with an address-space cap (``RLIMIT_AS``) and a wall-clock timeout.

Children come from multiprocessing's fork server: a clean process started once
that has already imported the extractors, and forks one child per document
(about 30 ms, against about 200 ms for a fresh interpreter, in MEASUREMENTS.md;
12-15 ms here, see bench/isolation_overhead.py).
Unlike a plain ``fork`` of the worker, a child inherits none of the worker's
threads, locks or database connections.
"""

from __future__ import annotations

import importlib
import math
import multiprocessing
import multiprocessing.forkserver
import os
import resource
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkServerContext
from typing import Any

from .errors import PermanentProcessingError, TransientProcessingError

DEFAULT_PROCESSOR = "docqueue_app.processing:extract"
ISOLATION_MODES = ("subprocess", "none")

# Imported once in the fork server, so a child starts with them loaded.
# (Each child also runs the parent's main script again, as multiprocessing
# requires; Python 3.11's fork server cannot preload it. Measured per child:
# the flask and docqueue launchers almost nothing, gunicorn's about 5 ms, the
# ``pytest`` launcher about 18 ms, ``python -m pytest`` nothing.)
FORKSERVER_PRELOAD = [
    "docqueue_app.processing",
    "pypdfium2",
    "lxml.etree",
    "selectolax.lexbor",
    "charset_normalizer",
]

_MIB = 1024 * 1024
# Time a child gets to exit after it sent its result, before it is killed.
_EXIT_GRACE_SECONDS = 5.0
# Exit status of a child that hit the memory cap while sending its outcome.
_EXIT_MEMORY_CAP = 86
_CPU_LIMIT_SLACK_SECONDS = 5
# Native code that cannot allocate under RLIMIT_AS aborts (PDFium: SIGABRT,
# measured) or crashes on the NULL it got back.
_MEMORY_CAP_SIGNALS = (signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS)

# multiprocessing reaps finished children from whichever thread starts the next
# one, and two threads reading one child's exit status can garble it; so
# starting, joining and reading exit codes happen under this lock. Waiting for a
# child happens outside it.
_CHILDREN_LOCK = threading.Lock()
_context: ForkServerContext | None = None


def run_processor(
    content: bytes,
    filename: str,
    content_type: str,
    *,
    processor: str = DEFAULT_PROCESSOR,
    isolation: str = "subprocess",
    memory_mb: int = 1024,
    timeout_seconds: float = 300,
) -> dict:
    """Call ``processor`` (``"module:callable"``) as ``f(content, filename, content_type)``.

    ``isolation="none"`` calls it in this process and lets its exceptions through.
    ``isolation="subprocess"`` calls it in a fresh child process whose address
    space is capped at ``memory_mb`` MiB (the whole child, interpreter included)
    and which is killed after ``timeout_seconds``. Outcomes:

    - the processor's result is returned;
    - ``PermanentProcessingError`` from the processor is raised again, same message;
    - the memory cap exceeded (``MemoryError``, or the child aborting or crashing
      under the cap) raises ``PermanentProcessingError("memory cap of N MB exceeded ...")``;
    - the timeout, a child that dies otherwise, or any other exception of the
      processor raise ``TransientProcessingError`` saying which.

    Safe to call from several threads at once and from forked workers (gunicorn).
    """
    module_name, attribute = _split_processor_name(processor)
    if isolation == "none":
        return _load_processor(module_name, attribute)(content, filename, content_type)
    if isolation != "subprocess":
        raise ValueError(f"isolation must be one of {ISOLATION_MODES}, not {isolation!r}")
    job = _ChildJob(processor, content, filename, content_type, memory_mb, timeout_seconds)
    return _run_in_child_process(job)


def _split_processor_name(processor: str) -> tuple[str, str]:
    module_name, separator, attribute = processor.partition(":")
    if not (module_name and separator and attribute):
        raise ValueError(f"processor must be 'module:callable', not {processor!r}")
    return module_name, attribute


def _load_processor(module_name: str, attribute: str) -> Callable[[bytes, str, str], dict]:
    target: Any = importlib.import_module(module_name)
    for name in attribute.split("."):
        target = getattr(target, name)
    return target


# --- the child -----------------------------------------------------------------


@dataclass(frozen=True)
class _ChildJob:
    processor: str
    content: bytes
    filename: str
    content_type: str
    memory_mb: int
    timeout_seconds: float


def _child_main(connection: Connection, job: _ChildJob) -> None:
    """Entry point of the child: cap resources, run the processor, send back its outcome."""
    _cap_address_space(job.memory_mb * _MIB)
    _cap_cpu_time(job.timeout_seconds)
    outcome: tuple[str, Any]
    try:
        processor = _load_processor(*_split_processor_name(job.processor))
        outcome = ("result", processor(job.content, job.filename, job.content_type))
    except MemoryError:
        outcome = ("memory", None)
    except PermanentProcessingError as exc:
        outcome = ("permanent", str(exc))
    except BaseException as exc:  # the parent decides what it means; nothing goes unreported
        outcome = ("error", f"{type(exc).__name__}: {exc}")
    _send_outcome(connection, outcome)


def _cap_address_space(memory_bytes: int) -> None:
    _set_limit(resource.RLIMIT_AS, memory_bytes)


def _cap_cpu_time(timeout_seconds: float) -> None:
    # A backstop only: the parent's wall-clock timeout comes first. It matters if
    # the parent is killed and cannot time the child out, so a child spinning on a
    # hostile file does not spin for ever (the kernel sends SIGXCPU, then SIGKILL).
    _set_limit(resource.RLIMIT_CPU, math.ceil(timeout_seconds) + _CPU_LIMIT_SLACK_SECONDS)


def _set_limit(limit: int, value: int) -> None:
    _, hard = resource.getrlimit(limit)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)  # a limit set from outside cannot be raised
    resource.setrlimit(limit, (value, value))


def _send_outcome(connection: Connection, outcome: tuple[str, Any]) -> None:
    try:
        connection.send(outcome)
    except MemoryError:
        # Pickling a large result can itself break the cap.
        os._exit(_EXIT_MEMORY_CAP)
    except Exception as exc:  # an unpicklable result: pickling fails before any byte is sent
        connection.send(("error", f"the processor's result cannot be sent back: {exc}"))


# --- the parent ----------------------------------------------------------------


def _run_in_child_process(job: _ChildJob) -> dict:
    context = _forkserver_context()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_child_main, args=(sender, job), name="docqueue-processor", daemon=True
    )
    outcome: Any = _TIMED_OUT
    try:
        try:
            with _CHILDREN_LOCK:
                process.start()
        finally:
            # The child holds its own copy; ours must go, or a dead child would not read as EOF.
            sender.close()
        outcome = _wait_for_outcome(receiver, job.timeout_seconds)
    finally:
        receiver.close()
        exit_code = _end_child(process, grace=0 if outcome is _TIMED_OUT else _EXIT_GRACE_SECONDS)
    return _interpret(outcome, exit_code, job.memory_mb, job.timeout_seconds)


_TIMED_OUT = object()


def _wait_for_outcome(receiver: Connection, timeout_seconds: float) -> Any:
    """The child's ``(kind, value)``; None if it died without one; ``_TIMED_OUT``."""
    if not receiver.poll(timeout_seconds):
        return _TIMED_OUT
    try:
        return receiver.recv()
    except EOFError:
        return None


def _end_child(process: multiprocessing.process.BaseProcess, grace: float) -> int | None:
    """Let the child exit within ``grace`` seconds, kill it otherwise; reap it; its exit code."""
    if process.pid is None:
        return None  # it never started
    wait([process.sentinel], grace)
    with _CHILDREN_LOCK:
        if process.exitcode is None:
            process.kill()
    wait([process.sentinel])
    with _CHILDREN_LOCK:
        process.join()
        exit_code = process.exitcode
        process.close()
    return exit_code


def _interpret(outcome: Any, exit_code: int | None, memory_mb: int, timeout_seconds: float) -> dict:
    if outcome is _TIMED_OUT:
        raise TransientProcessingError(f"timed out after {timeout_seconds:g} s")
    if outcome is None:
        raise _error_for_death_without_result(exit_code, memory_mb)
    kind, value = outcome
    if kind == "result":
        return value
    if kind == "memory":
        raise PermanentProcessingError(f"memory cap of {memory_mb} MB exceeded (MemoryError)")
    if kind == "permanent":
        raise PermanentProcessingError(value)
    raise TransientProcessingError(value)


def _error_for_death_without_result(exit_code: int | None, memory_mb: int) -> Exception:
    if exit_code == _EXIT_MEMORY_CAP:
        return PermanentProcessingError(
            f"memory cap of {memory_mb} MB exceeded (MemoryError while sending the result)"
        )
    if exit_code is not None and exit_code < 0:
        signal_name = _signal_name(-exit_code)
        if -exit_code in _MEMORY_CAP_SIGNALS:
            return PermanentProcessingError(
                f"memory cap of {memory_mb} MB exceeded "
                f"(the processing process was ended by {signal_name})"
            )
        return TransientProcessingError(
            f"processing process died (signal {signal_name}) without a result"
        )
    return TransientProcessingError(
        f"processing process died (exit code {exit_code}) without a result"
    )


def _signal_name(signal_number: int) -> str:
    try:
        return signal.Signals(signal_number).name
    except ValueError:
        return str(signal_number)


def _forkserver_context() -> ForkServerContext:
    global _context
    with _CHILDREN_LOCK:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            # Takes effect when the first child starts the fork server.
            context.set_forkserver_preload(FORKSERVER_PRELOAD)
            _context = context
        return _context


def _forget_inherited_fork_server() -> None:
    """Runs in a forked copy of this process (a gunicorn worker): start afresh.

    multiprocessing checks that its fork server is alive with waitpid(), which
    fails in a process that is not the server's parent, and a lock another
    thread held at the fork would never be released here. The copy starts a
    fork server of its own with its first document.
    """
    global _CHILDREN_LOCK
    _CHILDREN_LOCK = threading.Lock()
    server = multiprocessing.forkserver._forkserver
    server._lock = threading.Lock()
    if server._forkserver_pid is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_pid = None
        server._forkserver_address = None
        server._forkserver_alive_fd = None


os.register_at_fork(after_in_child=_forget_inherited_fork_server)
