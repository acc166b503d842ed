"""The pruner: deletes finished items and webhook deliveries past the retention period.

It runs once per cluster per interval, not once per process: the time of its
last run is kept in the database (``queue_state.pruned_at``) and only the
process that stamps it does the work. Deletes go in bounded batches and choose
items as a purge does: a document's latest item only with all its items.
"""

from __future__ import annotations

from ..webhooks.deliveries import DeliveryService
from .service import DocumentQueueService

PRUNE_EVERY_SECONDS = 3600.0


def prune_if_due(service: DocumentQueueService, retention_days: float) -> int:
    """Prune when this process gets the cluster's turn; the number of items deleted.

    Delivered and failed webhook deliveries past the retention period go in
    the same turn (Oban's Pruner, as for items).
    """
    if not service.take_pruner_turn(PRUNE_EVERY_SECONDS):
        return 0
    DeliveryService(service.session).prune_finished(retention_days)
    return service.prune_finished_items(retention_days)
