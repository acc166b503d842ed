"""Giving the memory of a large document back to the system once it is done.

glibc's malloc keeps much of what a process frees for later use: after one 50 MiB
document a worker stayed 70 to 320 MiB above its idle size for good
(bench/large_documents.py). Two settings of glibc's are behind it:

- a freed block larger than the mmap threshold (128 KiB at first) goes back to the
  system, but glibc then raises the threshold to that block's size (up to 32 MiB),
  so the next document's large buffers (its bytes, its text) come from a heap
  instead, which keeps them: 40 MiB of a 50 MiB document's stayed in a thread's
  heap, even after ``malloc_trim``. A fixed threshold keeps blocks of 1 MiB and
  more returnable;
- the pages freed in a heap stay with the process until ``malloc_trim(0)``
  returns them. It walks the whole heap, a few milliseconds, so it runs only after
  a large document, where it is nothing beside the document's own processing.

Under a C library without these (musl), both do nothing.
"""

from __future__ import annotations

import ctypes
from typing import Any

# Documents at least this large have their freed memory given back after them.
LARGE_DOCUMENT_BYTES = 8 * 1024 * 1024
# Blocks of at least this size are mapped and unmapped on their own (mallopt's
# M_MMAP_THRESHOLD, glibc's -3); setting it stops glibc from raising it.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 1024 * 1024


def _c_library_function(name: str) -> Any:
    """A function of the process's C library; None where it has none."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError):
        return None


_malloc_trim = _c_library_function("malloc_trim")
_mallopt = _c_library_function("mallopt")
_threshold_fixed = False


def keep_large_blocks_returnable() -> None:
    """Fix glibc's mmap threshold at 1 MiB for this process (once; then nothing)."""
    global _threshold_fixed
    if not _threshold_fixed and _mallopt is not None:
        _mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    _threshold_fixed = True


def is_large_document(document_bytes: int) -> bool:
    return document_bytes >= LARGE_DOCUMENT_BYTES


def give_back_freed_memory() -> None:
    """Return the free pages of every malloc arena to the system (after a large document)."""
    if _malloc_trim is not None:
        _malloc_trim(ctypes.c_size_t(0))
