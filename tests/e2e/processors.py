"""Processors for end-to-end tests, named by DOCQUEUE_PROCESSOR in a real server."""

from __future__ import annotations

import fcntl
import os
import time

from docqueue_app.processing import extract

# Where `recording_extract` appends one line per processed document.
RECORD_ENV = "DOCQUEUE_TEST_RECORD_FILE"


def recording_extract(content: bytes, filename: str, content_type: str) -> dict:
    """The built-in extractor, plus a line per call so a test can count the runs."""
    with open(os.environ[RECORD_ENV], "a") as record:
        fcntl.flock(record, fcntl.LOCK_EX)
        record.write(filename + "\n")
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
    return {"text": content.decode(), "title": None, "page_count": None, "metadata": {}}
