"""Giving the memory of a large document back to the system once it is done.

glibc's malloc keeps most of what a process frees for later use: after one
50 MiB document a worker stayed 70 to 320 MiB above its idle size for good
(bench/large_documents.py), and with ``--concurrency N`` every thread's arena kept
its own high-water mark. ``malloc_trim(0)`` returns the free pages of every arena.
It walks the whole heap, a few milliseconds, so it runs only after a large
document, where it is nothing beside the document's own processing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

# Documents at least this large have their freed memory given back after them.
LARGE_DOCUMENT_BYTES = 8 * 1024 * 1024


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim; None under a C library without it (musl)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _find_malloc_trim()


def is_large_document(document_bytes: int) -> bool:
    return document_bytes >= LARGE_DOCUMENT_BYTES


def give_back_freed_memory() -> None:
    """Return the free pages of every malloc arena to the system (after a large document)."""
    if _malloc_trim is not None:
        _malloc_trim(0)
