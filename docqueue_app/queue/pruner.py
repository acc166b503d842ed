"""The pruner: deletes finished items past the retention period (Oban's Pruner).

It runs once per cluster per interval, not once per process: the time of its
last run is kept in the database (``queue_state.pruned_at``) and only the
process that stamps it does the work. Deletes go in bounded batches, and a
document's latest item is never deleted, so its status stays explained.
"""

from __future__ import annotations

from .service import DocumentQueueService

PRUNE_EVERY_SECONDS = 3600.0


def prune_if_due(service: DocumentQueueService, retention_days: float) -> int:
    """Prune when this process gets the cluster's turn; the number of items deleted."""
    if not service.take_pruner_turn(PRUNE_EVERY_SECONDS):
        return 0
    return service.prune_finished_items(retention_days)
