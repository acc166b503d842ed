"""Processors for the bench: a no-op, and one that records when it was called.

Imported by docqueue workers through DOCQUEUE_PROCESSOR, so nothing heavy here.
"""

from __future__ import annotations

import os
import time

EMPTY_RESULT = {"text": "", "title": None, "page_count": None, "metadata": {}}


def noop(content: bytes, filename: str, content_type: str) -> dict:
    return dict(EMPTY_RESULT)


def record_call(content: bytes, filename: str, content_type: str) -> dict:
    """Append time.time() and the file name to BENCH_CALLS_FILE: when pickup happened."""
    with open(os.environ["BENCH_CALLS_FILE"], "a") as calls:
        calls.write(f"{time.time()!r} {filename}\n")
    return dict(EMPTY_RESULT)
