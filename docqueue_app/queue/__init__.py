"""The durable queue: the service that owns its state, the worker loop, the scheduler."""

from .service import (
    Claim,
    DocumentNotFound,
    DocumentQueueService,
    InvalidTransition,
    default_worker_id,
)
from .worker import _process_document_content, process_document_queue

__all__ = [
    "Claim",
    "DocumentNotFound",
    "DocumentQueueService",
    "InvalidTransition",
    "_process_document_content",
    "default_worker_id",
    "process_document_queue",
]
