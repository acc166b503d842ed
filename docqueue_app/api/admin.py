"""/api/queue/items, purge, pause, resume: queue management behind the admin login.

Shares the /api/queue prefix with the open stats route but is a blueprint of its
own, so its ``before_request`` guards cover every admin route and none other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from werkzeug.exceptions import Conflict

from ..models import QueueItem
from ..queue import DocumentQueueService, InvalidTransition
from ..queue_items import QueueItemPage, find_queue_item, list_queue_items, queue_item_not_found
from ..schemas import (
    ID_CONVERTER,
    PauseStateSchema,
    PurgeResultSchema,
    PurgeSchema,
    QueueItemDetailSchema,
    QueueItemListQuerySchema,
    QueueItemPageSchema,
    QueueItemSchema,
)
from ..security import refuse_cross_site_writes, require_admin
from .blueprint import ADMIN_LOGIN, ApiBlueprint

blp = ApiBlueprint(
    "queue_admin",
    __name__,
    url_prefix="/api/queue",
    description=(
        "Queue management. HTTP Basic as 'admin' with DOCQUEUE_ADMIN_PASSWORD: "
        "401 without it, 403 while no password is configured."
    ),
    security=ADMIN_LOGIN,
    guard_errors={
        401: "The admin login is missing or wrong",
        403: "DOCQUEUE_ADMIN_PASSWORD is not set, or a page of another site sent the request",
    },
)
# A browser resends a cached Basic login by itself, even for another site's page:
# such a request is refused before the login is looked at, let alone any change.
blp.before_request(refuse_cross_site_writes)
blp.before_request(require_admin)
NO_SUCH_ITEM = "No such queue item"


@blp.route("/items", methods=["GET"])
@blp.arguments(QueueItemListQuerySchema, location="query")
@blp.response(200, QueueItemPageSchema)
def list_queue_items_page(query: dict[str, Any]) -> QueueItemPage:
    return list_queue_items(query["status"], query["document_id"], query["page"], query["per_page"])


@blp.route(f"/items/<{ID_CONVERTER}:item_id>", methods=["GET"])
@blp.response(200, QueueItemDetailSchema)
@blp.error_response(404, NO_SUCH_ITEM)
def get_queue_item(item_id: int) -> QueueItem:
    return find_queue_item(item_id)


@blp.route(f"/items/<{ID_CONVERTER}:item_id>/retry", methods=["POST"])
@blp.response(200, QueueItemSchema, description="Pending again, due now, attempts reset")
@blp.error_response(404, NO_SUCH_ITEM)
@blp.error_response(409, "Not failed or cancelled, or not its document's latest item")
def retry_queue_item(item_id: int) -> QueueItem:
    return _change_item(DocumentQueueService().retry_item, item_id)


@blp.route(f"/items/<{ID_CONVERTER}:item_id>/cancel", methods=["POST"])
@blp.response(
    200, QueueItemSchema, description="Cancelled (a running one is stopped), and so is its document"
)
@blp.error_response(404, NO_SUCH_ITEM)
@blp.error_response(409, "Already finished")
def cancel_queue_item(item_id: int) -> QueueItem:
    return _change_item(DocumentQueueService().cancel_item, item_id)


def _change_item(action: Callable[[int], QueueItem], item_id: int) -> QueueItem:
    """Run one of the service's item transitions, its refusals as 404 and 409."""
    try:
        return action(item_id)
    except InvalidTransition as exc:
        raise Conflict(f"Queue item {item_id}: {exc}.") from None
    except LookupError:
        raise queue_item_not_found(item_id) from None


@blp.route("/purge", methods=["POST"])
@blp.arguments(PurgeSchema, location="json")
@blp.response(200, PurgeResultSchema, description="Finished items deleted; documents are kept")
@blp.error_response(400, "The body is not JSON")
def purge_queue_items(body: dict[str, Any]) -> dict[str, int]:
    deleted = DocumentQueueService().purge_items(body["older_than_days"], body["statuses"])
    return {"deleted": deleted}


@blp.route("/pause", methods=["POST"])
@blp.response(200, PauseStateSchema, description="Nothing is claimed until resumed")
def pause_queue() -> dict[str, bool]:
    return {"paused": DocumentQueueService().set_paused(True)}


@blp.route("/resume", methods=["POST"])
@blp.response(200, PauseStateSchema)
def resume_queue() -> dict[str, bool]:
    return {"paused": DocumentQueueService().set_paused(False)}
