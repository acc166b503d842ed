"""The exceptions that tell the queue whether retrying a document can help."""

from __future__ import annotations


class PermanentProcessingError(Exception):
    """The input can never be processed (corrupt, encrypted, over the memory cap): no retry."""


class TransientProcessingError(Exception):
    """Processing failed for a reason that may pass (crash, timeout, bug): retry with backoff."""


class UnsupportedContentType(PermanentProcessingError):
    """The bytes are not a supported document type; the message says what was detected.

    It is a permanent error too, so a processor that meets such bytes fails the
    document for good instead of retrying it.
    """


class ProcessingCancelled(Exception):
    """The document's processing was cancelled while it ran; its outcome, if any, is dropped.

    Neither permanent nor transient: the queue item was cancelled, so there is nothing to
    retry and nothing to record as a failure.
    """
