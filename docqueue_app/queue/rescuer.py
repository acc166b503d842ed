"""The rescuer: hands back the items of workers that died or hung (River's JobRescuer).

An item's lease runs out when its worker stopped extending it. The service
rescues such items in batches (each item in a savepoint of its own, so one that
cannot be written never keeps the rest stuck); the rescuer sweeps until none is
left. Claims also rescue before they look for due work, so no stuck item waits
for a maintenance round.
"""

from __future__ import annotations

import logging
from typing import Any

from ..metrics import record_rescues
from ..models import QueueItem
from . import queries
from .service import MAINTENANCE_BATCH, DocumentQueueService

log = logging.getLogger(__name__)


def rescue_lost_items(service: DocumentQueueService) -> int:
    """Rescue every item whose lease has expired; how many were handed back or failed."""
    rescued = 0
    while True:
        batch = service.rescue_expired_leases(limit=MAINTENANCE_BATCH)
        rescued += batch
        if batch < MAINTENANCE_BATCH:
            return rescued


class RescueReportingService(DocumentQueueService):
    """The queue service, saying which items it rescues: a log line each, and a count
    for /metrics (``docqueue_rescued_items_total``).

    The service's rescue returns only how many, and a claim's poll rescues too, so
    the report wraps the one method both call. The items are read just before,
    through the lease index; it runs only when a lease ran out (the claim's poll
    saw one) or in a maintenance round.
    """

    def rescue_expired_leases(self, limit: int = MAINTENANCE_BATCH) -> int:
        with self._read() as session:
            expired = session.execute(
                queries.expired_leases(self._now())
                .add_columns(
                    QueueItem.document_id,
                    QueueItem.locked_by,
                    QueueItem.attempts,
                    QueueItem.max_attempts,
                )
                .order_by(QueueItem.id)
                .limit(limit)
            ).all()
        if not expired:
            return 0
        rescued = super().rescue_expired_leases(limit)
        record_rescues(rescued)
        if rescued:  # else another process rescued them, and says so
            for row in expired:
                _log_rescue(row)
        return rescued


def _log_rescue(row: Any) -> None:
    out_of_attempts = row.attempts >= row.max_attempts
    log.log(
        logging.ERROR if out_of_attempts else logging.WARNING,
        "queue item %s of document %s: the lease of worker %s ran out during attempt %s of %s; %s",
        row.id,
        row.document_id,
        row.locked_by,
        row.attempts,
        row.max_attempts,
        "it failed for good" if out_of_attempts else "handed back to run again",
    )
