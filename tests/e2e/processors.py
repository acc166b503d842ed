"""Processors for end-to-end tests, named by DOCQUEUE_PROCESSOR in a real server."""

from __future__ import annotations

import fcntl
import os
import time
import zlib
from pathlib import Path

from docqueue_app.processing import extract

# Where `recording_extract` appends one line per processed document.
RECORD_ENV = "DOCQUEUE_TEST_RECORD_FILE"
# `held_until_released` marks each document it starts with a file in this folder
# and returns once a "release" file appears there, so a test sees the document
# in hand and decides when it ends instead of racing a sleep.
HOLD_ENV = "DOCQUEUE_TEST_HOLD_DIR"
RELEASE_WAIT_SECONDS = 120
# How long `recording_extract` and `storm_extract` work on one document (seconds).
WORK_ENV = "DOCQUEUE_TEST_WORK_SECONDS"
# `storm_extract` marks the documents it has seen in this folder (so that a
# document's first call can fail).
STORM_SEEN_ENV = "DOCQUEUE_TEST_SEEN_DIR"
# One document in this many fails its first call, transiently.
STORM_FAILURE_ONE_IN = 20


def _append(path: str, line: str) -> None:
    with open(path, "a") as record:
        fcntl.flock(record, fcntl.LOCK_EX)
        record.write(line + "\n")


def recording_extract(content: bytes, filename: str, content_type: str) -> dict:
    """The built-in extractor, plus a line per call so a test can count the runs.

    It works WORK_ENV seconds first (none by default), so that a test can catch
    documents in hand.
    """
    _append(os.environ[RECORD_ENV], filename)
    time.sleep(float(os.environ.get(WORK_ENV, "0")))
    return extract(content, filename, content_type)


def crash_on_marker(content: bytes, filename: str, content_type: str) -> dict:
    """Kill the processing process outright for documents that start with CRASH."""
    if content.startswith(b"CRASH"):
        os._exit(3)
    return extract(content, filename, content_type)


def sleep_briefly(content: bytes, filename: str, content_type: str) -> dict:
    """A slow but successful processor, to catch a worker mid-batch."""
    time.sleep(1.0)
    return {"text": content.decode(), "title": None, "page_count": None, "metadata": {}}


def misbehaving_results(content: bytes, filename: str, content_type: str) -> object:
    """Results a careless processor might return, chosen by the document's first word."""
    word = content.split()[0].decode()
    if word == "not-a-dict":
        return ["text"]
    if word == "object-metadata":
        return {"text": "x", "metadata": {"when": object()}}
    if word == "nul":
        return {"text": "before\x00after", "title": None, "page_count": None, "metadata": {}}
    if word == "lone-surrogate":
        return {"text": "\ud800 hello", "title": None, "page_count": None, "metadata": {}}
    return {"text": content.decode(), "title": None, "page_count": None, "metadata": {}}


def held_until_released(content: bytes, filename: str, content_type: str) -> dict:
    """A slow processor: it says it started, then works until the test releases it."""
    hold = Path(os.environ[HOLD_ENV])
    (hold / f"started-{filename}").touch()
    deadline = time.monotonic() + RELEASE_WAIT_SECONDS
    while not (hold / "release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never released the document")
        time.sleep(0.02)
    return {"text": content.decode(), "title": None, "page_count": None, "metadata": {}}


def storm_extract(content: bytes, filename: str, content_type: str) -> dict:
    """Works a little and records each call: a start line, then an end line.

    ``S <filename> <pid> <start>`` when it begins, ``E <filename> <pid> <start> <end>
    <ok|transient>`` when it returns or raises; a call whose process was killed
    has no end line. One document in STORM_FAILURE_ONE_IN (by a hash of its
    name) fails its first call with a plain (transient) exception, never a
    later one, so no document can fail for good through this processor alone.
    """
    record = os.environ[RECORD_ENV]
    pid, start = os.getpid(), time.time()
    _append(record, f"S {filename} {pid} {start:.6f}")
    time.sleep(float(os.environ.get(WORK_ENV, "0.05")))
    if zlib.crc32(filename.encode()) % STORM_FAILURE_ONE_IN == 0 and _first_call(filename):
        _append(record, f"E {filename} {pid} {start:.6f} {time.time():.6f} transient")
        raise Exception(f"transient failure of the first call for {filename}")
    _append(record, f"E {filename} {pid} {start:.6f} {time.time():.6f} ok")
    return {"text": content.decode(), "title": None, "page_count": None, "metadata": {}}


def _first_call(filename: str) -> bool:
    """True for exactly one call per document, across every process (O_EXCL)."""
    try:
        os.close(os.open(Path(os.environ[STORM_SEEN_ENV]) / filename, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True
