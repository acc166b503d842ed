"""Sandboxes: long-lived child processes that run documents one at a time under caps.

Native parsers can abort the whole process or eat gigabytes on a hostile file
(RESEARCH.md §0.8), so production runs documents in a child process with an
address-space cap (``RLIMIT_AS``) and a wall-clock timeout. Forking a child per
document costs 11-15 ms (bench/isolation_overhead.py), several times the
extraction of a small document; so, as Tika's forked servers do, a child, a
*sandbox*, processes many documents in turn and is replaced when it dies, times
out, is cancelled, has grown, or has served DOCUMENTS_PER_SANDBOX documents.

Sandboxes come from multiprocessing's fork server: a clean process started once
that has already imported the extractors, so a sandbox inherits none of the
worker's threads, locks or database connections, and PDFium is never loaded in
the worker or the web server.

The parent holds a pidfd of each sandbox, so killing it (timeout, cancel) and
waiting for its end never depend on the fork server, which may have died, and
never hit another process that got a reused pid. The fork server and the
sandboxes ignore SIGINT and SIGTERM, so a stop sent to the worker's whole process
group lets the worker finish the documents in hand. A sandbox's stderr passes
through the parent, which forwards it and keeps the tail of the current
document: that tail and the sandbox's address-space high-water mark, sampled by
the parent, tell a sandbox that died of the memory cap from one that crashed.
"""

from __future__ import annotations

import importlib
import math
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import re
import resource
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkServerContext
from typing import Any

from .errors import PermanentProcessingError, TransientProcessingError
from .fork_server_folder import own_fork_server_folder
from .options import ProcessingOptions, processing_options

# Imported once in the fork server, so a sandbox starts with them loaded.
# (Each child also runs the parent's main script again, as multiprocessing
# requires; Python 3.11's fork server cannot preload it. Measured per child:
# the flask and docqueue launchers almost nothing, gunicorn's about 5 ms, the
# ``pytest`` launcher about 18 ms, ``python -m pytest`` nothing.)
FORKSERVER_PRELOAD = [
    "docqueue_app.processing",
    "docqueue_app.processing.extraction",
    "docqueue_app.processing.pdf",
    "docqueue_app.processing.docx",
    "docqueue_app.processing.html",
    "docqueue_app.processing.text",
    "pypdfium2",
    "lxml.etree",
    "selectolax.lexbor",
    "charset_normalizer",
]

# A sandbox is replaced after this many documents, whatever happened: a slow leak in
# a native parser, or state a processor left behind, lasts that long at most.
DOCUMENTS_PER_SANDBOX = 200
# A sandbox whose address space has ever reached this fraction of the cap is replaced
# after its document. So every document starts in a sandbox whose high-water mark is
# below it, and a high-water mark near the cap (_NEAR_CAP_FRACTION, above this one),
# seen while a document runs, was reached by that document, never by one before it.
_GROWN_FRACTION = 0.5

_MIB = 1024 * 1024
# Time a sandbox gets to exit once its end of the pipe closed, before it is killed.
_EXIT_GRACE_SECONDS = 5.0
# Exit status of a sandbox that hit the memory cap while sending its outcome.
_EXIT_MEMORY_CAP = 86
_CPU_LIMIT_SLACK_SECONDS = 5
_WATCHDOG_STACK_BYTES = 256 * 1024
# Ctrl-C in a terminal, ``kill -TERM -- -PGID`` and systemd stopping the unit send
# these to the worker's whole process group, fork server and sandboxes included. The
# worker stops gracefully on them, finishing the documents in hand, so those must
# outlive them: only the parent's own SIGKILL (timeout, cancel, exit) ends a sandbox.
_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
# How often a wait for an outcome looks at the cancel event; the outcome or the
# sandbox's death ends the wait at once.
_CANCEL_POLL_SECONDS = 0.05
# Time a fork server that died under a sandbox's start gets to finish dying before
# the start is tried again (its exit takes about 10 ms here).
_FORK_SERVER_EXIT_SECONDS = 2.0

# Native code that cannot allocate under RLIMIT_AS aborts or crashes without telling
# Python, but so does a plain bug. The memory cap is named only on evidence:
# - the sandbox said so on stderr during the document (C++ ``std::bad_alloc``
#   escaping, a library's "out of memory", a Python traceback ending in MemoryError);
# - its address space reached the cap during the document: PDFium aborts without a
#   word when an allocation fails (FX_OutOfMemoryTerminate), and on the decompression
#   bomb of the tests it dies at 523 116 of 524 288 KiB (measured). A crash far below
#   the cap is a crash.
_ALLOCATION_FAILURE = re.compile(
    rb"bad_alloc|out of memory|cannot allocate memory|memory allocation failed"
    rb"|failed to allocate|MemoryError",
    re.IGNORECASE,
)
_NEAR_CAP_FRACTION = 0.9
# Bytes of a sandbox's stderr kept for that evidence.
_STDERR_TAIL_BYTES = 16 * 1024
# The kernel keeps a process's address-space high-water mark (VmPeak) only while it
# lives, so the parent reads it now and then: as rarely as this while the cap is
# far, and, nearer, each time a share of the headroom left would fill at the given
# rate, down to the minimum. PDFium inflates a bomb at 1 to 2 GB/s here (measured
# on two days); sampling only when the whole headroom would be full at the rate
# missed the last 10% before the cap whenever the growth was as fast as the rate
# (the bomb's test failed 2 runs in 5), so a quarter: a sample lands near the cap
# even at a few times the rate.
_SAMPLE_INTERVAL_MAX_SECONDS = 0.05
_SAMPLE_INTERVAL_MIN_SECONDS = 0.002
_ADDRESS_SPACE_GROWTH_BYTES_PER_SECOND = 2 * 1024 * _MIB
_HEADROOM_SHARE_PER_SAMPLE = 0.25
_VM_PEAK = re.compile(rb"^VmPeak:\s*(\d+) kB", re.MULTILINE)

# The parent's word to a sandbox, sent once it holds the sandbox's pidfd: the sandbox
# runs nothing before it, so its answer proves the pidfd is the sandbox's own.
_GO = b"go"
_READY = ("ready", None)

# What a document's wait ends with when the sandbox gave no outcome.
TIMED_OUT = object()
CANCELLED = object()

# multiprocessing reaps finished children from whichever thread starts the next
# one, and two threads reading one child's exit status can garble it; so
# starting, joining and reading exit codes happen under this lock. Waiting for a
# child happens outside it.
_CHILDREN_LOCK = threading.Lock()
_context: ForkServerContext | None = None


@dataclass(frozen=True)
class Caps:
    """The limits a sandbox runs its documents under; a sandbox keeps them for life."""

    memory_mb: int
    timeout_seconds: float


# A job, parent to sandbox: (processor "module:callable", content, filename, content_type,
# the options the built-in extractor reads).
Job = tuple[str, bytes, str, str, ProcessingOptions]
# An outcome, sandbox to parent: ("ok", result) or ("error", kind, message), kind one of:
MEMORY_CAP = "memory"  # MemoryError: the memory cap
PERMANENT = "permanent"  # PermanentProcessingError, with its message
TRANSIENT = "transient"  # anything else, the message names it


def split_processor_name(processor: str) -> tuple[str, str]:
    module_name, separator, attribute = processor.partition(":")
    if not (module_name and separator and attribute):
        raise ValueError(f"processor must be 'module:callable', not {processor!r}")
    return module_name, attribute


def load_processor(module_name: str, attribute: str) -> Callable[[bytes, str, str], dict]:
    target: Any = importlib.import_module(module_name)
    for name in attribute.split("."):
        target = getattr(target, name)
    return target


# --- the sandbox (the child) ----------------------------------------------------------


class _InheritedFd:
    """A file descriptor handed to the child: multiprocessing duplicates it into the child."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Callable[[Any], int], tuple[Any]]:
        return _inherited_fd, (reduction.DupFd(self.fd),)


def _inherited_fd(duplicate: Any) -> int:
    return duplicate.detach()


def _sandbox_main(connection: Connection, stderr_fd: int, caps: Caps) -> None:
    """Entry point of the sandbox: cap its memory, then run jobs until the parent hangs up."""
    _ignore_stop_signals()
    _redirect_stderr(stderr_fd)
    _set_limit(resource.RLIMIT_AS, caps.memory_mb * _MIB)
    if not _go_received(connection):
        return  # the parent gave up on this sandbox before it could start
    connection.send(_READY)  # the parent holds this process's pidfd now, and may trust it
    _exit_when_the_parent_hangs_up(connection)
    processors: dict[str, Callable[[bytes, str, str], dict]] = {}
    while _serve_next_job(connection, processors, caps):
        pass


def _serve_next_job(
    connection: Connection, processors: dict[str, Callable[[bytes, str, str], dict]], caps: Caps
) -> bool:
    """Receive, run and answer one job; False when the sandbox is to end.

    The job and its outcome go with this call: a sandbox waiting for its next
    document held the last one's bytes and text (57 MiB after a 50 MiB document).
    """
    try:
        job = connection.recv()
    except EOFError:
        return False  # the parent is done with this sandbox
    except MemoryError:
        # The document alone breaks the cap; the rest of it is still in the pipe.
        _send_outcome(connection, ("error", MEMORY_CAP, "MemoryError"))
        return False
    _cap_cpu_time_of_next_job(caps.timeout_seconds)
    outcome = _run_job(job, processors)
    _flush_standard_streams()  # what the document wrote is read before its outcome
    try:
        _send_outcome(connection, outcome)
    except OSError:
        return False  # the parent is gone (killed): nobody waits for this outcome
    return True


def _exit_when_the_parent_hangs_up(connection: Connection) -> None:
    """End this sandbox as soon as the parent's end of the pipe closes, even mid-document.

    The job loop sees the parent's end only between documents; a document blocked in
    a sleep or a read uses no CPU, so the CPU-time backstop never fires either, and
    a sandbox whose worker was SIGKILLed ran on for ever, an orphan holding up to the
    memory cap (and keeping its fork server alive). A thread that only waits for the
    hang-up (poll with no events reports POLLHUP alone) ends it; the parent sends
    nothing while a document runs, and only the parent or its death closes its end.
    """
    watch = select.poll()
    watch.register(connection.fileno(), 0)

    def wait_for_hang_up() -> None:
        while True:
            for _, events in watch.poll():
                if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    os._exit(0)

    # A small stack: a thread's default 8 MiB would count against RLIMIT_AS.
    previous = threading.stack_size(_WATCHDOG_STACK_BYTES)
    try:
        threading.Thread(target=wait_for_hang_up, name="parent-watch", daemon=True).start()
    finally:
        threading.stack_size(previous)


def _ignore_stop_signals() -> None:
    for stop_signal in _STOP_SIGNALS:
        signal.signal(stop_signal, signal.SIG_IGN)
    # Blocked since the sandbox's birth when its fork server was started by this module
    # (_stop_signals_blocked); ignored from now on, they can be let through.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _redirect_stderr(stderr_fd: int) -> None:
    # Into the parent's pipe: what native code says before it dies is evidence.
    if sys.stderr is not None:
        sys.stderr.flush()
    os.dup2(stderr_fd, 2)
    os.close(stderr_fd)
    # stdout too: the worker's stdout is its own output (`queue process` prints JSON there).
    if sys.stdout is not None:
        sys.stdout.flush()
    os.dup2(2, 1)


def _go_received(connection: Connection) -> bool:
    try:
        return connection.recv_bytes() == _GO
    except EOFError:
        return False


def _cap_cpu_time_of_next_job(timeout_seconds: float) -> None:
    # A backstop only: the parent's wall-clock timeout comes first. It matters if
    # the parent is killed and cannot time the sandbox out, so a sandbox spinning on
    # a hostile file does not spin for ever (the kernel sends SIGXCPU, which ends
    # it). The CPU time a process used counts, so the soft limit moves on with each
    # job; the hard limit stays where it was, for the next job to raise the soft one.
    used = resource.getrusage(resource.RUSAGE_SELF)
    budget = math.ceil(used.ru_utime + used.ru_stime + timeout_seconds) + _CPU_LIMIT_SLACK_SECONDS
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        budget = min(budget, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (budget, hard))


def _set_limit(limit: int, value: int) -> None:
    _, hard = resource.getrlimit(limit)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)  # a limit set from outside cannot be raised
    resource.setrlimit(limit, (value, value))


def _run_job(job: Job, processors: dict[str, Callable[[bytes, str, str], dict]]) -> tuple:
    processor_name, content, filename, content_type, options = job
    try:
        processor = processors.get(processor_name)
        if processor is None:
            processor = load_processor(*split_processor_name(processor_name))
            processors[processor_name] = processor
        with processing_options(options):
            return ("ok", processor(content, filename, content_type))
    except MemoryError:
        return ("error", MEMORY_CAP, "MemoryError")
    except PermanentProcessingError as exc:
        return ("error", PERMANENT, str(exc))
    except BaseException as exc:  # the parent decides what it means; nothing goes unreported
        return ("error", TRANSIENT, f"{type(exc).__name__}: {exc}")


def _flush_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with suppress(Exception):  # a processor may have closed or replaced it
                stream.flush()


def _send_outcome(connection: Connection, outcome: tuple) -> None:
    try:
        connection.send(outcome)
    except MemoryError:
        # Pickling a large result can itself break the cap.
        os._exit(_EXIT_MEMORY_CAP)
    except OSError:
        raise  # the pipe, not the outcome
    except Exception as exc:  # an unpicklable result: pickling fails before any byte is sent
        message = f"the processor's result cannot be sent back: {exc}"
        connection.send(("error", TRANSIENT, message))


# --- the parent: what it watches in a sandbox ------------------------------------------


class _SandboxStderr:
    """The sandbox's stderr, a pipe: forwarded to ours as it comes, the tail kept as evidence."""

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
        for _ in range(16):  # at most 1 MiB: a chatty sandbox must not hold up the waiting
            try:
                chunk = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return
            if not chunk:
                self.at_eof = True
                return
            _write_to_our_stderr(chunk)
            self.tail = (self.tail + chunk)[-_STDERR_TAIL_BYTES:]

    def start_document(self) -> None:
        """From now on the tail is the next document's: what came before is forwarded only.

        The previous document's stderr was drained once its outcome came (it was
        written before), and an idle sandbox writes nothing.
        """
        self.tail = b""

    def allocation_failure_line(self) -> str | None:
        """The last line the sandbox wrote that reports an allocation failure."""
        for line in reversed(self.tail.splitlines()):
            if _ALLOCATION_FAILURE.search(line):
                return line.strip()[:200].decode("utf-8", errors="replace")
        return None

    def close(self) -> None:
        self.close_write_end()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _write_to_our_stderr(data: bytes) -> None:
    # Where the sandbox's stderr went before it was captured, so logs stay as they were.
    try:
        while data:
            data = data[os.write(2, data) :]
    except OSError:
        pass  # no stderr to write to: the tail is kept all the same


class _AddressSpaceWatch:
    """The sandbox's address-space high-water mark (VmPeak), sampled by the parent."""

    def __init__(self, status_fd: int, cap_bytes: int) -> None:
        self._status_fd = status_fd  # the sandbox's /proc/PID/status, opened while it lived
        self.cap_bytes = cap_bytes
        self.peak_bytes = 0
        self._next_sample_at = 0.0
        self.start_document()

    def start_document(self) -> None:
        # Most documents are done before a first sample would help.
        self._next_sample_at = time.monotonic() + _SAMPLE_INTERVAL_MAX_SECONDS

    def seconds_to_next_sample(self) -> float:
        return max(0.0, self._next_sample_at - time.monotonic())

    def sample_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_sample_at:
            return
        self.sample()
        headroom = max(0, self.cap_bytes - self.peak_bytes)
        interval = headroom * _HEADROOM_SHARE_PER_SAMPLE / _ADDRESS_SPACE_GROWTH_BYTES_PER_SECOND
        self._next_sample_at = now + min(
            _SAMPLE_INTERVAL_MAX_SECONDS, max(_SAMPLE_INTERVAL_MIN_SECONDS, interval)
        )

    def sample(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self._read_peak())

    def near_the_cap(self) -> bool:
        return self.peak_bytes >= self.cap_bytes * _NEAR_CAP_FRACTION

    def grown(self) -> bool:
        return self.peak_bytes >= self.cap_bytes * _GROWN_FRACTION

    def _read_peak(self) -> int:
        try:
            # Read afresh from the start each time; once the sandbox is gone, it fails.
            match = _VM_PEAK.search(os.pread(self._status_fd, 8192, 0))
        except OSError:
            return 0
        return int(match.group(1)) * 1024 if match else 0

    def close(self) -> None:
        if self._status_fd >= 0:
            os.close(self._status_fd)
            self._status_fd = -1


def _open_status_while_alive(pid: int, pidfd: int) -> int | None:
    """The process's /proc/PID/status, opened while the pidfd's process lived, or None."""
    try:
        status_fd = os.open(f"/proc/{pid}/status", os.O_RDONLY)
    except OSError:  # ended meanwhile, or no /proc
        return None
    # The file belongs to the process that had the pid when it was opened, and keeps
    # reading that process's status only; alive after the opening, that was the sandbox.
    if _has_ended(pidfd):
        os.close(status_fd)
        return None
    return status_fd


class _ReadyCheck:
    """Whether a descriptor reads as ready now, at the cost of one poll() call.

    A pidfd reads as ready once its process has ended; a sentinel, once the fork
    server reported the end (or died).
    """

    def __init__(self, fd: int) -> None:
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def __call__(self) -> bool:
        return bool(self._poll.poll(0))


# --- the parent: one sandbox ---------------------------------------------------------


class Sandbox:
    """The parent's hold on one sandbox, used by one thread at a time.

    Creating it starts the child, which waits for ``let_go`` (in between, the caller
    makes it killable at exit: ``kill_at_exit``). Then ``run`` each document, and
    ``end`` it once ``reusable`` says no or a document ended without an outcome;
    then ``close``.
    """

    def __init__(self, caps: Caps) -> None:
        self.caps = caps
        self.owner_pid = os.getpid()
        self.documents_done = 0
        self.hit_the_memory_cap = False
        self._start()

    def _start(self) -> None:
        try:
            self._start_once()
            return
        except (OSError, EOFError) as exc:
            failure: Exception = exc
        # The fork server died (killed, or out of memory) since its last child: the
        # request reached a dying server. Once it is gone, multiprocessing starts a new one.
        if _fork_server_ended_within(_FORK_SERVER_EXIT_SECONDS):
            try:
                self._start_once()
                return
            except (OSError, EOFError) as exc:
                failure = exc
        raise TransientProcessingError(
            f"could not start the processing process: {type(failure).__name__}: {failure}"
        ) from failure

    def _start_once(self) -> None:
        context = _forkserver_context()
        connection, child_connection = context.Pipe()
        stderr = _SandboxStderr()
        process = context.Process(
            target=_sandbox_main,
            args=(child_connection, _InheritedFd(stderr.write_fd), self.caps),
            name="docqueue-sandbox",
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
            # The sandbox holds its own copies; ours must go, or its death would not read as EOF.
            child_connection.close()
            stderr.close_write_end()
        self.process = process
        self.connection = connection  # "go" and jobs to the sandbox; "ready" and outcomes back
        self.stderr = stderr
        # None: the sandbox ended before it was opened, or no pidfd support.
        self.pidfd = _open_pidfd(process.pid)
        # Whether the pidfd is known to be the sandbox's own: the sandbox was seen alive
        # after the pidfd was opened (a pid is reused only once its process was reaped).
        self.pidfd_trusted = False
        self.address_space: _AddressSpaceWatch | None = None
        self.hung_up = False  # its end of the pipe closed: it died, or is dying
        self._ended: _ReadyCheck | None = None  # by its pidfd, once trusted
        self._fork_server_reported = _ReadyCheck(process.sentinel)
        # Polled with each document (a poll object kept is much cheaper than a new one).
        self._outcome_or_stderr = select.poll()
        self._outcome_or_stderr.register(connection.fileno(), select.POLLIN)
        self._outcome_or_stderr.register(stderr.fd, select.POLLIN)

    def let_go(self) -> None:
        with suppress(OSError):  # the sandbox is gone already; its end of the pipe says so
            self.connection.send_bytes(_GO)

    def run(self, job: Job, cancel: threading.Event | None) -> Any:
        """The document's outcome; None if the sandbox died without one; TIMED_OUT; CANCELLED.

        After anything but an outcome, the sandbox must be ended.
        """
        self.stderr.start_document()
        if self.address_space is not None:
            self.address_space.start_document()
        deadline = time.monotonic() + self.caps.timeout_seconds
        # A sandbox that died, or broke the cap reading the job, is read below all the same.
        with suppress(OSError):
            self.connection.send(job)
        outcome = self._wait_for_outcome(deadline, cancel)
        if isinstance(outcome, tuple):
            self.documents_done += 1
            # After a MemoryError, the heap is anyone's guess: start the next one clean.
            if outcome[:2] == ("error", MEMORY_CAP):
                self.hit_the_memory_cap = True
        return outcome

    def _wait_for_outcome(self, deadline: float, cancel: threading.Event | None) -> Any:
        while True:
            ready = self._ready_descriptors(self._seconds_to_next_look(deadline, cancel))
            if self.stderr.fd in ready:
                self.stderr.drain()
                if self.stderr.at_eof:
                    self._outcome_or_stderr.unregister(self.stderr.fd)
            if self.connection.fileno() in ready:
                message = self._receive()
                if message != _READY:
                    return message
                self._trust_pidfd()
                continue
            # Nothing from the sandbox since the wait began, not even an EOF: it lives,
            # so its pidfd, opened before, is its own.
            if time.monotonic() >= deadline:
                self._trust_pidfd()
                return TIMED_OUT
            if cancel is not None and cancel.is_set():
                self._trust_pidfd()
                return CANCELLED
            if self.address_space is not None:
                self.address_space.sample_if_due()

    def _ready_descriptors(self, timeout: float) -> set[int]:
        milliseconds = math.ceil(timeout * 1000)  # never 0 for a short wait: no busy loop
        return {fd for fd, _ in self._outcome_or_stderr.poll(milliseconds)}

    def _receive(self) -> Any:
        try:
            return self.connection.recv()
        except EOFError:
            self.hung_up = True
            return None

    def _seconds_to_next_look(self, deadline: float, cancel: threading.Event | None) -> float:
        seconds = deadline - time.monotonic()
        if cancel is not None:
            seconds = min(seconds, _CANCEL_POLL_SECONDS)
        if self.address_space is not None:
            seconds = min(seconds, self.address_space.seconds_to_next_sample())
        return max(0.0, seconds)

    def _trust_pidfd(self) -> None:
        """Call only when the sandbox was seen alive after its pidfd was opened."""
        if self.pidfd is not None and not self.pidfd_trusted:
            self.pidfd_trusted = True
            self._ended = _ReadyCheck(self.pidfd)
            status_fd = _open_status_while_alive(self.process.pid, self.pidfd)
            if status_fd is not None:
                cap_bytes = self.caps.memory_mb * _MIB
                self.address_space = _AddressSpaceWatch(status_fd, cap_bytes)

    def reusable(self) -> bool:
        """Whether the next document may run here; call after an outcome."""
        self.stderr.drain()  # what the document wrote reaches our stderr now, not later
        watch = self.address_space
        worn_out = self.documents_done >= DOCUMENTS_PER_SANDBOX
        if watch is None or worn_out or self.hit_the_memory_cap:
            return False
        watch.sample()
        # A fork server that died could not report this sandbox's exit status.
        return not watch.grown() and not self._fork_server_reported()

    def alive(self) -> bool:
        """Whether it still runs: an idle sandbox may be killed from outside (the OOM killer)."""
        return self._ended is not None and not self._ended()

    def end(self) -> int | None:
        """Kill the sandbox, or let it finish dying if it is; reap it; its exit code."""
        # One that hung up on its own is on its way out: its exit code tells how it ended.
        grace = _EXIT_GRACE_SECONDS if self.hung_up else 0
        if not self._wait_for_death(grace):
            self._kill()
            self._wait_for_death(None)
        self.stderr.drain()
        return _collect_exit_code(self.process)

    def _wait_for_death(self, timeout: float | None) -> bool:
        """Whether the sandbox ended within ``timeout`` seconds; its stderr is read meanwhile."""
        # The pidfd tells the sandbox's end itself; without it, the fork server's report
        # does, which comes at once (EOF) if the fork server died.
        death = self.pidfd if self.pidfd_trusted else self.process.sentinel
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            watched: list[Any] = [death]
            if not self.stderr.at_eof:
                watched.append(self.stderr.fd)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait(watched, remaining)
            if death in ready:
                return True
            if not ready:
                return False
            self.stderr.drain()

    def _kill(self) -> None:
        if self.pidfd_trusted and self.pidfd is not None:
            _kill_by_pidfd(self.pidfd)
            return
        # No pidfd of its own (a kernel before 5.3): by pid, if the fork server says it runs.
        with _CHILDREN_LOCK:
            if self.process.exitcode is None:
                self.process.kill()

    def kill_at_exit(self) -> None:
        """Kill the sandbox if it may be alive, from any thread, while it is not closed."""
        # One that has not answered yet lives while its end of the pipe is open.
        if self.pidfd is not None and (self.pidfd_trusted or not self.connection.poll(0)):
            _kill_by_pidfd(self.pidfd)

    def memory_cap_evidence(self) -> str | None:
        """Why a sandbox that died during a document is thought to have died of the memory cap."""
        reported = self.stderr.allocation_failure_line()
        if reported is not None:
            return f'after writing "{reported}" to stderr'
        watch = self.address_space
        if watch is not None and watch.near_the_cap():
            return (
                f"after its address space had reached {watch.peak_bytes // _MIB} MB "
                f"of the {watch.cap_bytes // _MIB} MB cap"
            )
        return None

    def close(self) -> None:
        """Release the parent's descriptors; the sandbox itself is left as it is."""
        if self.address_space is not None:
            self.address_space.close()  # what it saw stays: memory_cap_evidence reads it
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        self.connection.close()
        self.stderr.close()

    def forget_in_forked_copy(self) -> None:
        """In a forked copy of the parent: drop the parent's sandbox without touching it.

        multiprocessing would otherwise wait for it at this copy's exit, and the copy's
        descriptors would keep the sandbox from seeing its parent's end.
        """
        multiprocessing.process._children.discard(self.process)  # type: ignore[attr-defined]
        self.close()


@contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Start sandboxes (and the fork server, when it starts) with the stop signals blocked.

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


def _has_ended(fd: int, timeout: float = 0) -> bool:
    """Whether the pidfd's process ended (or the sentinel's report came) within ``timeout``."""
    # A pidfd reads as ready once its process has ended. (multiprocessing's wait
    # polls; select() would fail on a descriptor above 1023.)
    return bool(wait([fd], timeout))


def _kill_by_pidfd(pidfd: int) -> None:
    with suppress(ProcessLookupError):  # it ended meanwhile
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)


def _collect_exit_code(process: multiprocessing.process.BaseProcess) -> int | None:
    # The fork server reports the status once it reaped the sandbox; EOF, read as 255,
    # if the fork server died. Waiting for that happens outside the lock.
    wait([process.sentinel])
    with _CHILDREN_LOCK:
        process.join()
        exit_code = process.exitcode
        process.close()
    return exit_code


def exit_code_for_memory_cap(exit_code: int | None) -> bool:
    """Whether the sandbox said, by its exit status, that sending an outcome broke the cap."""
    return exit_code == _EXIT_MEMORY_CAP


def _forkserver_context() -> ForkServerContext:
    global _context
    with _CHILDREN_LOCK:
        # The fork server's socket folder: removed by the next worker if this one is killed.
        own_fork_server_folder()
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            # Takes effect when the first sandbox starts the fork server.
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
