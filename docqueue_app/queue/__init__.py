"""The durable queue: the service that owns its state, the worker loop, the scheduler."""

from typing import Any

from .service import (
    ChangedSince,
    Claim,
    ClaimedItem,
    DocumentNotFound,
    DocumentQueueService,
    InvalidTransition,
    Outcome,
    default_worker_id,
)
from .worker import _process_document_content, process_document_queue


def read_queue_stats() -> dict[str, Any]:
    """The queue's counts per status (for /metrics), inside an app context."""
    return DocumentQueueService().get_queue_stats()


__all__ = [
    "ChangedSince",
    "Claim",
    "ClaimedItem",
    "DocumentNotFound",
    "DocumentQueueService",
    "InvalidTransition",
    "Outcome",
    "_process_document_content",
    "default_worker_id",
    "process_document_queue",
    "read_queue_stats",
]
