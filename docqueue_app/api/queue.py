"""/api/queue/stats: queue depth for dashboards and scripts (open, like /metrics)."""

from __future__ import annotations

from typing import Any

from ..queue import DocumentQueueService
from ..schemas import QueueStatsSchema
from .blueprint import ApiBlueprint

blp = ApiBlueprint("queue", __name__, url_prefix="/api/queue", description="Queue statistics.")


@blp.route("/stats", methods=["GET"])
@blp.alt_response(200, schema=QueueStatsSchema, description="Items per status", success=True)
def queue_stats() -> dict[str, Any]:
    # Passed through whole: whatever the service counts (paused included), the caller sees.
    return DocumentQueueService().get_queue_stats()
