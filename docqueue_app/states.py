"""The queue's vocabulary: item and document states, operations, attempt outcomes.

One small module that models, schemas, pages and the queue all import, so the
state machine reads in one place (SPEC §3)::

    pending ──claim──▶ in_progress ──▶ completed
       ▲                   │  ├──────▶ failed      (permanent, last attempt, worker lost)
       └─ retry / rescue ──┘  └──────▶ cancelled   (withdrawn, or superseded)
"""

from __future__ import annotations

import enum

MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 0, 10, 5


class ItemStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for its run_at; claimable once due
    IN_PROGRESS = "in_progress"  # claimed by a worker holding a lease
    COMPLETED = "completed"  # processed; the document holds the result
    FAILED = "failed"  # permanent error, no attempts left, or its worker lost for good
    CANCELLED = "cancelled"  # withdrawn by an admin, or folded into a newer pending item


class DocumentStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Operation(enum.StrEnum):
    PROCESS = "process"  # first processing after upload
    REPROCESS = "reprocess"  # asked for again by a user


class AttemptOutcome(enum.StrEnum):
    COMPLETED = "completed"
    RETRY = "retry"  # transient failure; the item went back to pending (or was superseded)
    FAILED = "failed"  # permanent failure or last attempt
    LOST = "lost"  # the worker's lease ran out before it reported
    CANCELLED = "cancelled"  # an admin cancelled the item while it ran


class DeliveryStatus(enum.StrEnum):
    """A webhook delivery (SPEC §8): sent until a 2xx answer, or out of attempts."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookEvent(enum.StrEnum):
    """A document's terminal events: each ends a queue item (a retry ends nothing)."""

    COMPLETED = "document.completed"
    FAILED = "document.failed"
    CANCELLED = "document.cancelled"


# Items that will not change again unless an admin retries them.
FINISHED_STATUSES = (ItemStatus.COMPLETED, ItemStatus.FAILED, ItemStatus.CANCELLED)

# A document's status is always the status of its latest queue item.
DOCUMENT_STATUS_OF_ITEM = {
    ItemStatus.PENDING: DocumentStatus.PENDING,
    ItemStatus.IN_PROGRESS: DocumentStatus.PROCESSING,
    ItemStatus.COMPLETED: DocumentStatus.COMPLETED,
    ItemStatus.FAILED: DocumentStatus.FAILED,
    ItemStatus.CANCELLED: DocumentStatus.CANCELLED,
}
