"""/api/cron/process-queue: one queue pass, for hosts where an external cron drives the work.

Such hosts run no webhook lane, so each call then sends a bounded number of
due webhook deliveries too (concurrently, each within its time cap).
"""

from __future__ import annotations

from ..queue import process_document_queue
from ..schemas import ProcessQueueResultSchema
from ..security import require_cron_secret
from ..webhooks.lane import send_due_deliveries
from .blueprint import CRON_SECRET, ApiBlueprint

blp = ApiBlueprint(
    "cron",
    __name__,
    url_prefix="/api/cron",
    description="Queue passes driven by a cron job.",
    security=CRON_SECRET,
    guard_errors={
        401: "Missing or wrong bearer secret",
        403: "DOCQUEUE_CRON_SECRET is not set",
    },
)
# No cross-site guard: the secret is a bearer token, which no browser sends by itself.
blp.before_request(require_cron_secret)


@blp.route("/process-queue", methods=["GET", "POST"])
@blp.alt_response(
    200, schema=ProcessQueueResultSchema, description="Counts of this pass", success=True
)
def process_queue() -> dict[str, int]:
    counts = process_document_queue()
    send_due_deliveries()
    return counts
