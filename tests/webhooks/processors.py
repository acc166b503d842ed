"""Processors of the webhook tests, named by DOCQUEUE_PROCESSOR (in-process and in workers)."""

from __future__ import annotations

from docqueue_app.processing import PermanentProcessingError


def echo_or_fail(content: bytes, filename: str, content_type: str) -> dict:
    """The text is the bytes; a document starting with FAIL fails for good, FLAKY transiently."""
    if content.startswith(b"FAIL"):
        raise PermanentProcessingError("refused on purpose")
    if content.startswith(b"FLAKY"):
        raise RuntimeError("try again later")
    text = content.decode()
    return {"text": text, "title": filename, "page_count": 1, "metadata": {"echoed": len(text)}}
