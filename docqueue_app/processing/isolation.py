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

The parent holds a pidfd of each child, so killing a child (timeout, cancel) and
waiting for its end never depend on the fork server, which may have died, and
never hit another process that got a reused pid. The fork server and the
children ignore SIGINT and SIGTERM, so a stop sent to the worker's whole process
group lets the worker finish the documents in hand. A child's stderr passes
through the parent, which forwards it and keeps its tail: that tail and the
child's address-space high-water mark, sampled by the parent, tell a child that
died of the memory cap from one that crashed.
"""

from __future__ import annotations

import atexit
import importlib
import math
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import re
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing import reduction
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any

from .errors import PermanentProcessingError, ProcessingCancelled, TransientProcessingError

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
# Ctrl-C in a terminal, ``kill -TERM -- -PGID`` and systemd stopping the unit send
# these to the worker's whole process group, fork server and children included. The
# worker stops gracefully on them, finishing the documents in hand, so those must
# outlive them: only the parent's own SIGKILL (timeout, cancel, exit) ends a child.
_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
# How often a wait for a child looks at the cancel event; the child's outcome or
# death ends the wait at once.
_CANCEL_POLL_SECONDS = 0.05
# Time a fork server that died under a child's start gets to finish dying before
# the start is tried again (its exit takes about 10 ms here).
_FORK_SERVER_EXIT_SECONDS = 2.0

# Native code that cannot allocate under RLIMIT_AS aborts or crashes without telling
# Python, but so does a plain bug. The memory cap is named only on evidence:
# - the child said so on stderr (C++ ``std::bad_alloc`` escaping, a library's "out of
#   memory", a Python traceback ending in MemoryError);
# - its address space had reached the cap: PDFium aborts without a word when an
#   allocation fails (FX_OutOfMemoryTerminate), and on the decompression bomb of
#   the tests it dies at 523 116 of 524 288 KiB (measured). A crash far below the cap
#   is a crash.
_ALLOCATION_FAILURE = re.compile(
    rb"bad_alloc|out of memory|cannot allocate memory|memory allocation failed"
    rb"|failed to allocate|MemoryError",
    re.IGNORECASE,
)
_NEAR_CAP_FRACTION = 0.9
# Bytes of a child's stderr kept for that evidence.
_STDERR_TAIL_BYTES = 16 * 1024
# The kernel keeps a process's address-space high-water mark (VmPeak) only while it
# lives, so the parent reads it now and then: as rarely as this while the cap is
# far, and as often as the headroom left would take to fill at the given rate
# (PDFium inflates a bomb at about 1 GB/s here), down to the minimum.
_SAMPLE_INTERVAL_MAX_SECONDS = 0.05
_SAMPLE_INTERVAL_MIN_SECONDS = 0.002
_ADDRESS_SPACE_GROWTH_BYTES_PER_SECOND = 2 * 1024 * _MIB
_VM_PEAK = re.compile(rb"^VmPeak:\s*(\d+) kB", re.MULTILINE)

# The parent's word to a child, sent once it holds the child's pidfd: the child runs
# nothing before it, so the child's answer proves the pidfd is the child's own.
_GO = b"go"
_READY = ("ready", None)

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
    cancel: threading.Event | None = None,
) -> dict:
    """Call ``processor`` (``"module:callable"``) as ``f(content, filename, content_type)``.

    ``isolation="none"`` calls it in this process and lets its exceptions through.
    ``isolation="subprocess"`` calls it in a fresh child process whose address
    space is capped at ``memory_mb`` MiB (the whole child, interpreter included)
    and which is killed after ``timeout_seconds``. Outcomes:

    - the processor's result is returned;
    - ``PermanentProcessingError`` from the processor is raised again, same message;
    - the memory cap exceeded (``MemoryError``, or the child dying with evidence of
      the cap: an allocation failure on its stderr, or its address space at the
      cap) raises ``PermanentProcessingError("memory cap of N MB exceeded ...")``;
    - the timeout, a child that dies otherwise (the error names the signal or exit
      code), or any other exception of the processor raise
      ``TransientProcessingError`` saying which.

    ``cancel``: once set, the document's outcome no longer matters. A child is
    killed at once (within about 50 ms); without isolation the processor cannot be
    stopped and its result or error is dropped when it returns. Either way, and
    when it is set before the call, ``ProcessingCancelled`` is raised.

    The child ignores SIGINT and SIGTERM: only this function kills it. Safe to call
    from several threads at once and from forked workers (gunicorn).
    """
    module_name, attribute = _split_processor_name(processor)
    if isolation not in ISOLATION_MODES:
        raise ValueError(f"isolation must be one of {ISOLATION_MODES}, not {isolation!r}")
    _raise_if_cancelled(cancel)
    if isolation == "none":
        processor_function = _load_processor(module_name, attribute)
        return _run_in_this_process(processor_function, content, filename, content_type, cancel)
    job = _ChildJob(processor, content, filename, content_type, memory_mb, timeout_seconds)
    return _run_in_child_process(job, cancel)


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


# --- the child -----------------------------------------------------------------


@dataclass(frozen=True)
class _ChildJob:
    processor: str
    content: bytes
    filename: str
    content_type: str
    memory_mb: int
    timeout_seconds: float


class _InheritedFd:
    """A file descriptor handed to the child: multiprocessing duplicates it into the child."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Callable[[Any], int], tuple[Any]]:
        return _inherited_fd, (reduction.DupFd(self.fd),)


def _inherited_fd(duplicate: Any) -> int:
    return duplicate.detach()


def _child_main(connection: Connection, stderr_fd: int, job: _ChildJob) -> None:
    """Entry point of the child: cap resources, run the processor, send back its outcome."""
    _ignore_stop_signals()
    _redirect_stderr(stderr_fd)
    _cap_address_space(job.memory_mb * _MIB)
    _cap_cpu_time(job.timeout_seconds)
    if not _go_received(connection):
        return  # the parent gave up on this child before it could start
    connection.send(_READY)  # the parent holds this process's pidfd now, and may trust it
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


def _ignore_stop_signals() -> None:
    for stop_signal in _STOP_SIGNALS:
        signal.signal(stop_signal, signal.SIG_IGN)
    # Blocked since the child's birth when its fork server was started by this module
    # (_stop_signals_blocked); ignored from now on, they can be let through.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _redirect_stderr(stderr_fd: int) -> None:
    # Into the parent's pipe: what native code says before it dies is evidence.
    if sys.stderr is not None:
        sys.stderr.flush()
    os.dup2(stderr_fd, 2)
    os.close(stderr_fd)


def _go_received(connection: Connection) -> bool:
    try:
        return connection.recv_bytes() == _GO
    except EOFError:
        return False


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


# --- the parent: one child ------------------------------------------------------


class _ChildStderr:
    """The child's stderr, a pipe: forwarded to ours as it comes, its tail kept as evidence."""

    def __init__(self) -> None:
        self.fd, self.write_fd = os.pipe()
        os.set_blocking(self.fd, False)
        self.at_eof = False
        self.tail = b""

    def close_write_end(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def drain(self) -> None:
        """Read and forward what has come, without blocking."""
        for _ in range(16):  # at most 1 MiB: a chatty child must not hold up the waiting
            try:
                chunk = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return
            if not chunk:
                self.at_eof = True
                return
            _write_to_our_stderr(chunk)
            self.tail = (self.tail + chunk)[-_STDERR_TAIL_BYTES:]

    def allocation_failure_line(self) -> str | None:
        """The last line the child wrote that reports an allocation failure."""
        for line in reversed(self.tail.splitlines()):
            if _ALLOCATION_FAILURE.search(line):
                return line.strip()[:200].decode("utf-8", errors="replace")
        return None

    def close(self) -> None:
        self.close_write_end()
        os.close(self.fd)


def _write_to_our_stderr(data: bytes) -> None:
    # Where the child's stderr went before it was captured, so logs stay as they were.
    try:
        while data:
            data = data[os.write(2, data) :]
    except OSError:
        pass  # no stderr to write to: the tail is kept all the same


class _AddressSpaceWatch:
    """The child's address-space high-water mark (VmPeak), sampled by the parent."""

    def __init__(self, pid: int, pidfd: int, cap_bytes: int) -> None:
        self._status_path = f"/proc/{pid}/status"
        self._pidfd = pidfd
        self.cap_bytes = cap_bytes
        self.peak_bytes = 0
        # Most documents are done before a first sample would help.
        self._next_sample_at = time.monotonic() + _SAMPLE_INTERVAL_MAX_SECONDS

    def seconds_to_next_sample(self) -> float:
        return max(0.0, self._next_sample_at - time.monotonic())

    def sample_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_sample_at:
            return
        self.peak_bytes = max(self.peak_bytes, self._read_peak())
        headroom = max(0, self.cap_bytes - self.peak_bytes)
        interval = headroom / _ADDRESS_SPACE_GROWTH_BYTES_PER_SECOND
        self._next_sample_at = now + min(
            _SAMPLE_INTERVAL_MAX_SECONDS, max(_SAMPLE_INTERVAL_MIN_SECONDS, interval)
        )

    def near_the_cap(self) -> bool:
        return self.peak_bytes >= self.cap_bytes * _NEAR_CAP_FRACTION

    def _read_peak(self) -> int:
        try:
            with open(self._status_path, "rb") as status:
                # The file belongs to the process that had the pid when it was opened;
                # while the pidfd's process lives, that was the child.
                if _has_ended(self._pidfd):
                    return 0
                match = _VM_PEAK.search(status.read())
        except OSError:  # ended meanwhile, or no /proc
            return 0
        return int(match.group(1)) * 1024 if match else 0


@dataclass(eq=False)
class _Child:
    """The parent's hold on one running child."""

    process: BaseProcess
    connection: Connection  # "go" to the child; "ready" and the outcome from it
    stderr: _ChildStderr
    pidfd: int | None  # None: the child ended before it was opened, or no pidfd support
    cap_bytes: int
    # Whether the pidfd is known to be the child's own: the child was seen alive after
    # the pidfd was opened (a pid is reused only once its process has been reaped).
    pidfd_trusted: bool = False
    address_space: _AddressSpaceWatch | None = field(default=None)

    def trust_pidfd(self) -> None:
        """Call only when the child was seen alive after its pidfd was opened."""
        if self.pidfd is not None and not self.pidfd_trusted:
            self.pidfd_trusted = True
            self.address_space = _AddressSpaceWatch(self.process.pid, self.pidfd, self.cap_bytes)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
        self.connection.close()
        self.stderr.close()


def _run_in_child_process(job: _ChildJob, cancel: threading.Event | None) -> dict:
    child = _start_child(job)
    outcome: Any = _TIMED_OUT
    try:
        outcome = _wait_for_outcome(child, job.timeout_seconds, cancel)
    finally:
        stopped = outcome is _TIMED_OUT or outcome is _CANCELLED
        exit_code = _end_child(child, grace=0 if stopped else _EXIT_GRACE_SECONDS)
    if outcome is _CANCELLED:
        raise ProcessingCancelled("processing was cancelled")
    _raise_if_cancelled(cancel)  # cancelled as the outcome came: dropped all the same
    return _interpret(outcome, exit_code, _memory_cap_evidence(child), job)


_TIMED_OUT = object()
_CANCELLED = object()


def _start_child(job: _ChildJob) -> _Child:
    try:
        return _start_child_once(job)
    except (OSError, EOFError) as exc:
        failure: Exception = exc
    # The fork server died (killed, or out of memory) since its last child: the request
    # reached a dying server. Once it is gone, multiprocessing starts a new one.
    if _fork_server_ended_within(_FORK_SERVER_EXIT_SECONDS):
        try:
            return _start_child_once(job)
        except (OSError, EOFError) as exc:
            failure = exc
    raise TransientProcessingError(
        f"could not start the processing process: {type(failure).__name__}: {failure}"
    ) from failure


def _start_child_once(job: _ChildJob) -> _Child:
    context = _forkserver_context()
    connection, child_connection = context.Pipe()
    stderr = _ChildStderr()
    process = context.Process(
        target=_child_main,
        args=(child_connection, _InheritedFd(stderr.write_fd), job),
        name="docqueue-processor",
        daemon=True,
    )
    try:
        with _CHILDREN_LOCK, _stop_signals_blocked():
            process.start()
    except BaseException:
        connection.close()
        stderr.close()
        raise
    finally:
        # The child holds its own copies; ours must go, or a dead child would not read as EOF.
        child_connection.close()
        stderr.close_write_end()
    child = _Child(process, connection, stderr, _open_pidfd(process.pid), job.memory_mb * _MIB)
    with _RUNNING_LOCK:
        _running_children.add(child)
    with suppress(OSError):  # the child is gone already; its end of the pipe says so
        connection.send_bytes(_GO)
    return child


@contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Start children (and the fork server, when it starts) with the stop signals blocked.

    A fork server started now inherits the mask and keeps it (a group SIGTERM would
    otherwise end it), and its children are born with it, safe until they ignore
    the signals themselves. Blocking them in this thread delays nothing: another
    thread takes them, or this one once they are unblocked.
    """
    # The resource tracker unblocks these signals after starting itself, which the
    # fork server's start would do first: have it running already.
    multiprocessing.resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _open_pidfd(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:  # ended and reaped already, or a kernel before 5.3
        return None


def _fork_server_ended_within(timeout: float) -> bool:
    pid = multiprocessing.forkserver._forkserver._forkserver_pid
    if pid is None:
        return True
    # It is this process's child, so the pid stays its own until ensure_running reaps it.
    pidfd = _open_pidfd(pid)
    if pidfd is None:
        return False
    try:
        return _has_ended(pidfd, timeout)
    finally:
        os.close(pidfd)


def _has_ended(pidfd: int, timeout: float = 0) -> bool:
    """Whether the pidfd's process ended within ``timeout`` seconds."""
    # A pidfd reads as ready once its process has ended. (multiprocessing's wait
    # polls; select() would fail on a descriptor above 1023.)
    return bool(wait([pidfd], timeout))


def _wait_for_outcome(child: _Child, timeout_seconds: float, cancel: threading.Event | None) -> Any:
    """The child's ``(kind, value)``; None if it died without one; _TIMED_OUT; _CANCELLED."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        watched: list[Any] = [child.connection]
        if not child.stderr.at_eof:
            watched.append(child.stderr.fd)
        ready = wait(watched, _seconds_to_next_look(child, deadline, cancel))
        if child.stderr.fd in ready:
            child.stderr.drain()
        if child.connection in ready:
            message = _receive(child.connection)
            if message != _READY:
                return message
            child.trust_pidfd()
            continue
        # Nothing from the child since the wait began, not even an EOF: it lives, so
        # its pidfd, opened before, is its own.
        if time.monotonic() >= deadline:
            child.trust_pidfd()
            return _TIMED_OUT
        if cancel is not None and cancel.is_set():
            child.trust_pidfd()
            return _CANCELLED
        if child.address_space is not None:
            child.address_space.sample_if_due()


def _seconds_to_next_look(child: _Child, deadline: float, cancel: threading.Event | None) -> float:
    seconds = deadline - time.monotonic()
    if cancel is not None:
        seconds = min(seconds, _CANCEL_POLL_SECONDS)
    if child.address_space is not None:
        seconds = min(seconds, child.address_space.seconds_to_next_sample())
    return max(0.0, seconds)


def _receive(connection: Connection) -> Any:
    try:
        return connection.recv()
    except EOFError:
        return None


def _end_child(child: _Child, grace: float) -> int | None:
    """Let the child exit within ``grace`` seconds, kill it otherwise; reap it; its exit code."""
    try:
        if not _wait_for_death(child, grace):
            _kill(child)
            _wait_for_death(child, None)
        child.stderr.drain()
        return _collect_exit_code(child.process)
    finally:
        with _RUNNING_LOCK:
            _running_children.discard(child)
        child.close()


def _wait_for_death(child: _Child, timeout: float | None) -> bool:
    """Whether the child ended within ``timeout`` seconds; its stderr is read meanwhile."""
    # The pidfd tells the child's end itself; without it, the fork server's report
    # does, which comes at once (EOF) if the fork server died.
    death = child.pidfd if child.pidfd_trusted else child.process.sentinel
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        watched: list[Any] = [death]
        if not child.stderr.at_eof:
            watched.append(child.stderr.fd)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = wait(watched, remaining)
        if death in ready:
            return True
        if not ready:
            return False
        child.stderr.drain()


def _kill(child: _Child) -> None:
    if child.pidfd_trusted:
        _kill_by_pidfd(child.pidfd)
        return
    # No pidfd of its own (a kernel before 5.3): by pid, if the fork server says it runs.
    with _CHILDREN_LOCK:
        if child.process.exitcode is None:
            child.process.kill()


def _kill_by_pidfd(pidfd: int) -> None:
    with suppress(ProcessLookupError):  # it ended meanwhile
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)


def _collect_exit_code(process: BaseProcess) -> int | None:
    # The fork server reports the status once it reaped the child; EOF, read as 255,
    # if the fork server died. Waiting for that happens outside the lock.
    wait([process.sentinel])
    with _CHILDREN_LOCK:
        process.join()
        exit_code = process.exitcode
        process.close()
    return exit_code


def _memory_cap_evidence(child: _Child) -> str | None:
    """Why a child that died without a result is thought to have died of the memory cap."""
    reported = child.stderr.allocation_failure_line()
    if reported is not None:
        return f'after writing "{reported}" to stderr'
    watch = child.address_space
    if watch is not None and watch.near_the_cap():
        return (
            f"after its address space had reached {watch.peak_bytes // _MIB} MB "
            f"of the {watch.cap_bytes // _MIB} MB cap"
        )
    return None


def _interpret(outcome: Any, exit_code: int | None, evidence: str | None, job: _ChildJob) -> dict:
    if outcome is _TIMED_OUT:
        raise TransientProcessingError(f"timed out after {job.timeout_seconds:g} s")
    if outcome is None:
        raise _error_for_death_without_result(exit_code, evidence, job.memory_mb)
    kind, value = outcome
    if kind == "result":
        return value
    if kind == "memory":
        raise PermanentProcessingError(f"memory cap of {job.memory_mb} MB exceeded (MemoryError)")
    if kind == "permanent":
        raise PermanentProcessingError(value)
    raise TransientProcessingError(value)


def _error_for_death_without_result(
    exit_code: int | None, evidence: str | None, memory_mb: int
) -> Exception:
    if exit_code == _EXIT_MEMORY_CAP:
        return PermanentProcessingError(
            f"memory cap of {memory_mb} MB exceeded (MemoryError while sending the result)"
        )
    if exit_code is not None and exit_code < 0:
        ending = f"signal {_signal_name(-exit_code)}"
    else:
        ending = f"exit code {exit_code}"
    if evidence is not None:
        return PermanentProcessingError(
            f"memory cap of {memory_mb} MB exceeded "
            f"(the processing process died ({ending}) {evidence})"
        )
    return TransientProcessingError(f"processing process died ({ending}) without a result")


def _signal_name(signal_number: int) -> str:
    try:
        return signal.Signals(signal_number).name
    except ValueError:
        return str(signal_number)


# --- the parent: all children ---------------------------------------------------

# Children not yet ended, for _kill_running_children.
_RUNNING_LOCK = threading.Lock()
_running_children: set[_Child] = set()


def _kill_running_children() -> None:
    """At exit: kill the children of documents still in hand.

    multiprocessing's own exit handler, which runs after this one, would send them
    SIGTERM, which they ignore, then wait for them.
    """
    # Under the lock: a child leaves the set before its pidfd is closed.
    with _RUNNING_LOCK:
        for child in _running_children:
            # One that has not answered yet lives while its end of the pipe is open.
            if child.pidfd is not None and (child.pidfd_trusted or not child.connection.poll(0)):
                _kill_by_pidfd(child.pidfd)


atexit.register(_kill_running_children)


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
    global _CHILDREN_LOCK, _RUNNING_LOCK
    _CHILDREN_LOCK = threading.Lock()
    _RUNNING_LOCK = threading.Lock()
    _running_children.clear()  # the parent's, not this copy's
    server = multiprocessing.forkserver._forkserver
    server._lock = threading.Lock()
    if server._forkserver_pid is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_pid = None
        server._forkserver_address = None
        server._forkserver_alive_fd = None


os.register_at_fork(after_in_child=_forget_inherited_fork_server)
