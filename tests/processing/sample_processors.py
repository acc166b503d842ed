"""Processors that misbehave on purpose, for isolation tests.

Other test suites name them in settings, e.g.
``DOCQUEUE_PROCESSOR=tests.processing.sample_processors:exit_abruptly``: keep the names.
Each has the processor signature ``f(content, filename, content_type) -> dict``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import resource
import signal
import time


def echo_text(content: bytes, filename: str, content_type: str) -> dict:
    """Succeeds: the bytes decoded as UTF-8 are the text."""
    return {
        "text": content.decode("utf-8", errors="replace"),
        "title": filename,
        "page_count": None,
        "metadata": {"content_type": content_type},
    }


def report_digest(content: bytes, filename: str, content_type: str) -> dict:
    """Succeeds: the text is the sha256 of the bytes it was given."""
    return {"text": hashlib.sha256(content).hexdigest(), "title": None, "page_count": None}


def report_pid(content: bytes, filename: str, content_type: str) -> dict:
    """Succeeds: the text is the pid of the process that ran it."""
    return {"text": str(os.getpid()), "title": None, "page_count": None, "metadata": {}}


def exit_abruptly(content: bytes, filename: str, content_type: str) -> dict:
    """Ends the process at once, as a crash would, without a result."""
    os._exit(3)


def raise_memory_error(content: bytes, filename: str, content_type: str) -> dict:
    raise MemoryError("simulated allocation failure")


def raise_runtime_error(content: bytes, filename: str, content_type: str) -> dict:
    raise RuntimeError("simulated processor bug")


def sleep_forever(content: bytes, filename: str, content_type: str) -> dict:
    while True:
        time.sleep(3600)


def allocate_gigabytes(content: bytes, filename: str, content_type: str) -> dict:
    """Tries to hold 4 GiB, which only a memory cap stops."""
    block = bytearray(4 * 1024**3)
    return {"text": str(len(block)), "title": None, "page_count": None, "metadata": {}}


def _write_pid_to(path: str) -> None:
    """Written whole or not at all: the reader polls for the file and must never see half a pid."""
    with open(path + ".partial", "w") as out:
        out.write(str(os.getpid()))
    os.replace(path + ".partial", path)


def report_pid_then_sleep(content: bytes, filename: str, content_type: str) -> dict:
    """Writes its pid to the file named by the content, then sleeps for ever."""
    _write_pid_to(content.decode())
    while True:
        time.sleep(3600)


def report_pid_then_wait_for_release(content: bytes, filename: str, content_type: str) -> dict:
    """Writes its pid to the file named by the content; returns once ``<file>.release`` exists."""
    path = content.decode()
    _write_pid_to(path)
    while not os.path.exists(path + ".release"):
        time.sleep(0.01)
    return {"text": "released", "title": None, "page_count": None, "metadata": {}}


def read_null_pointer(content: bytes, filename: str, content_type: str) -> dict:
    """Crashes with SIGSEGV far below any memory cap, as a bug in native code would."""
    ctypes.string_at(0)
    raise AssertionError("reading address 0 did not crash")


def kill_itself(content: bytes, filename: str, content_type: str) -> dict:
    """Sends itself the signal the content names (``b"SIGSEGV"``), far below any memory cap."""
    os.kill(os.getpid(), signal.Signals[content.decode()])
    time.sleep(60)  # the signal ends the process before this does
    raise AssertionError("the signal did not end the process")


def abort_reporting_bad_alloc(content: bytes, filename: str, content_type: str) -> dict:
    """Dies as C++ code does when ``new`` fails and nothing catches it: message, then SIGABRT."""
    os.write(
        2,
        b"terminate called after throwing an instance of 'std::bad_alloc'\n"
        b"  what():  std::bad_alloc\n",
    )
    os.abort()


def write_to_stderr(content: bytes, filename: str, content_type: str) -> dict:
    """Writes the content to stderr (fd 2) and succeeds."""
    os.write(2, content)
    return {"text": "written", "title": None, "page_count": None, "metadata": {}}


def grow_close_to_the_cap(content: bytes, filename: str, content_type: str) -> dict:
    """Takes its address space to 93 % of its RLIMIT_AS, gives it back, and succeeds.

    Only the process's address-space high-water mark (VmPeak) stays near the cap.
    The text is its pid.
    """
    cap, _ = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as status:
        in_use = int(re.search(r"VmSize:\s*(\d+) kB", status.read()).group(1)) * 1024
    block = bytearray(int(cap * 0.93) - in_use)  # zero pages: address space, not memory
    del block
    return report_pid(content, filename, content_type)


def crash_after_a_moment(content: bytes, filename: str, content_type: str) -> dict:
    """Crashes with SIGSEGV after 0.3 s, far below any memory cap.

    Long enough for the parent to sample the process's address space first.
    """
    time.sleep(0.3)
    return read_null_pointer(content, filename, content_type)
