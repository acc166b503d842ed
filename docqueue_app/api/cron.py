"""/api/cron/process-queue: one queue pass, for hosts where an external cron drives the work."""

from __future__ import annotations

from ..queue import process_document_queue
from ..schemas import ProcessQueueResultSchema
from ..security import require_cron_secret
from .blueprint import ApiBlueprint

blp = ApiBlueprint(
    "cron", __name__, url_prefix="/api/cron", description="Queue passes driven by a cron job."
)
blp.before_request(require_cron_secret)


@blp.route("/process-queue", methods=["GET", "POST"])
@blp.alt_response(
    200, schema=ProcessQueueResultSchema, description="Counts of this pass", success=True
)
@blp.alt_response(401, description="Missing or wrong bearer secret")
@blp.alt_response(403, description="DOCQUEUE_CRON_SECRET is not set")
def process_queue() -> dict[str, int]:
    return process_document_queue()
