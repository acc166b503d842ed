"""Processors that misbehave on purpose, for isolation tests.

Other test suites name them in settings, e.g.
``DOCQUEUE_PROCESSOR=tests.processing.sample_processors:exit_abruptly``: keep the names.
Each has the processor signature ``f(content, filename, content_type) -> dict``.
"""

from __future__ import annotations

import os
import time


def echo_text(content: bytes, filename: str, content_type: str) -> dict:
    """Succeeds: the bytes decoded as UTF-8 are the text."""
    return {
        "text": content.decode("utf-8", errors="replace"),
        "title": filename,
        "page_count": None,
        "metadata": {"content_type": content_type},
    }


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
