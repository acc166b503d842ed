"""The admin console at /admin/: the queue's figures, its items, the failed webhook
deliveries, and the actions on them.

Every action is a plain form (CSRF token included) that posts, flashes what
happened and answers 303 back to the page the admin came from, filter kept;
``static/js/admin.js`` only refreshes the figures. Writes go through
``DocumentQueueService`` (and ``DeliveryService`` for deliveries); reads through
``admin/queries.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, flash, jsonify, redirect, render_template, request, url_for
from marshmallow import Schema, ValidationError
from werkzeug.exceptions import BadRequest, HTTPException, NotFound

from ..config import MAX_PURGE_AGE_DAYS
from ..models import Document, db
from ..queue import DocumentQueueService, InvalidTransition
from ..queue_items import find_queue_item
from ..schemas import (
    ID_CONVERTER,
    AdminItemFilterSchema,
    AdminPurgeSchema,
    PaginationQuerySchema,
    describe_validation_errors,
)
from ..security import refuse_cross_site_writes, require_admin
from ..states import ItemStatus
from ..web.pages import add_page_security_headers, render_error_page
from ..webhooks.deliveries import DeliveryService
from . import queries
from .queries import CANCELLABLE, RETRYABLE, ItemFilter

blueprint = Blueprint("admin", __name__, url_prefix="/admin")
blueprint.before_request(refuse_cross_site_writes)
blueprint.before_request(require_admin)
blueprint.after_request(add_page_security_headers)
blueprint.register_error_handler(HTTPException, render_error_page)

PER_PAGE = 50
# A bulk action changes at most this many items (newest first); run it again for more.
BULK_LIMIT = 1_000
DEFAULT_PURGE_DAYS = 30
# name in the URL: (statuses it applies to, verb for the page, service method, done)
BULK_ACTIONS = {
    "retry": (RETRYABLE, "Retry", DocumentQueueService.retry_items, "Retried"),
    "cancel": (CANCELLABLE, "Cancel", DocumentQueueService.cancel_items, "Cancelled"),
}


@blueprint.app_template_filter("age")
def format_age(seconds: float | None) -> str:
    """A duration for people: '42 s', '12 min', '3 h 5 min', '2 d 4 h'."""
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 3600:
        return f"{minutes} min"
    if seconds < 86400:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"


# -- reading --------------------------------------------------------------------


@blueprint.get("/")
def dashboard() -> str:
    query = _load(AdminItemFilterSchema(), request.args)
    item_filter = _item_filter(query)
    page = queries.list_items(item_filter, query["page"], PER_PAGE)
    return render_template(
        "admin/dashboard.html",
        stats=_stats(),
        throughput=queries.throughput(queries.database_now()),
        filter=item_filter,
        page=page,
        statuses=[status.value for status in ItemStatus],
        next_url=request.full_path.rstrip("?"),
        default_purge_days=DEFAULT_PURGE_DAYS,
        max_purge_days=MAX_PURGE_AGE_DAYS,
        failed_deliveries=queries.failed_delivery_count(),
    )


@blueprint.get("/stats.json")
def stats_json() -> Response:
    """What admin.js polls to keep the dashboard's figures current."""
    stats = _stats()
    return jsonify(
        counts={status: count.as_json() for status, count in stats["counts"].items()},
        total=stats["total"].as_json(),
        oldest_due_age_seconds=stats["oldest_due_age_seconds"],
        oldest_due_age=format_age(stats["oldest_due_age_seconds"]),
        paused=stats["paused"],
    )


def _stats() -> dict[str, Any]:
    counts = queries.status_counts()
    return {
        "counts": counts,
        "total": queries.total_of(counts),
        "oldest_due_age_seconds": queries.oldest_due_age_seconds(queries.database_now()),
        "paused": DocumentQueueService().is_paused(),
    }


@blueprint.get(f"/items/<{ID_CONVERTER}:item_id>")
def item_detail(item_id: int) -> str:
    item = find_queue_item(item_id)
    return render_template(
        "admin/item.html",
        item=item,
        document=db.session.get(Document, item.document_id),
        next_url=request.path,
        retryable=item.status in RETRYABLE,
        cancellable=item.status in CANCELLABLE,
    )


# -- one item -------------------------------------------------------------------


@blueprint.post(f"/items/<{ID_CONVERTER}:item_id>/retry")
def retry_item(item_id: int) -> Response:
    return _change_item(item_id, DocumentQueueService().retry_item, "Retried")


@blueprint.post(f"/items/<{ID_CONVERTER}:item_id>/cancel")
def cancel_item(item_id: int) -> Response:
    return _change_item(item_id, DocumentQueueService().cancel_item, "Cancelled")


def _change_item(item_id: int, action: Callable[[int], Any], done: str) -> Response:
    find_queue_item(item_id)  # 404 when unknown
    return _change(
        lambda: action(item_id), f"queue item {item_id}", f"{done} queue item {item_id}."
    )


def _change(action: Callable[[], Any], subject: str, done: str) -> Response:
    """Run one action on one row and say how it went: changed, in another state, or gone.

    The row may have changed since the admin's page showed it; that is a message
    on the page the admin comes back to, not an error.
    """
    try:
        action()
    except InvalidTransition as exc:
        flash(f"{subject.capitalize()} was not changed: {exc}.")
    except LookupError:
        flash(f"{subject.capitalize()} no longer exists.")
    else:
        flash(done)
    return _back()


# -- webhook deliveries -----------------------------------------------------------


@blueprint.get("/deliveries")
def failed_deliveries() -> str:
    page = _load(PaginationQuerySchema(), request.args)["page"]
    return render_template(
        "admin/deliveries.html",
        page=queries.list_failed_deliveries(page, PER_PAGE),
        next_url=request.full_path.rstrip("?"),
    )


@blueprint.post("/deliveries/<delivery_id>/deliver-again")
def deliver_again(delivery_id: str) -> Response:
    """A failed delivery sent again under the same delivery id (receivers may dedupe by it)."""
    if queries.find_delivery(delivery_id) is None:
        raise NotFound(f"Webhook delivery {delivery_id} does not exist.")
    return _change(
        lambda: DeliveryService().deliver_again(delivery_id),
        f"delivery {delivery_id}",
        f"Delivery {delivery_id} will be sent again.",
    )


# -- many items -----------------------------------------------------------------


@blueprint.get("/bulk/<action>")
def confirm_bulk(action: str) -> str:
    statuses, verb, _, _ = _bulk_action(action)
    item_filter = _filter_from(request.args)
    return render_template(
        "admin/confirm_bulk.html",
        action=action,
        verb=verb,
        filter=item_filter,
        count=queries.count_actionable(item_filter, statuses),
        limit=BULK_LIMIT,
        statuses=statuses,
    )


@blueprint.post("/bulk/<action>")
def run_bulk(action: str) -> Response:
    statuses, _, method, done = _bulk_action(action)
    item_filter = _filter_from(request.form)
    ids = queries.actionable_ids(item_filter, statuses, BULK_LIMIT)
    changed = method(DocumentQueueService(), ids)
    flash(f"{done} {_items(changed)}.")
    skipped = len(ids) - changed
    if skipped:
        flash(f"{_items(skipped)} changed in the meantime and were left as they are.")
    return redirect(url_for(".dashboard", **item_filter.query_args()), 303)


def _bulk_action(action: str) -> tuple[Any, str, str, str]:
    if action not in BULK_ACTIONS:
        raise BadRequest(f"Unknown bulk action {action!r}: retry or cancel.")
    return BULK_ACTIONS[action]


@blueprint.post("/retry-failed")
def retry_failed() -> Response:
    retried = DocumentQueueService().retry_failed_items()
    flash(f"Retried {_items(retried)}.")
    return _back()


@blueprint.get("/purge")
def confirm_purge() -> str:
    days = _purge_days(request.args)
    return render_template(
        "admin/confirm_purge.html",
        days=days,
        count=queries.count_purgeable(days, queries.database_now()),
        next_url=_safe_next(request.args.get("next")),
    )


@blueprint.post("/purge")
def purge() -> Response:
    days = _purge_days(request.form)
    deleted = DocumentQueueService().purge_items(days)
    flash(f"Purged {_items(deleted)} finished more than {days:g} days ago.")
    return _back()


def _purge_days(values: Any) -> float:
    return _load(AdminPurgeSchema(), values)["days"]


# -- the queue's switch ---------------------------------------------------------


@blueprint.post("/pause")
def pause() -> Response:
    DocumentQueueService().set_paused(True)
    flash("Processing paused: nothing is claimed until it is resumed.")
    return _back()


@blueprint.post("/resume")
def resume() -> Response:
    DocumentQueueService().set_paused(False)
    flash("Processing resumed.")
    return _back()


# -- request helpers ------------------------------------------------------------


def _filter_from(values: Any) -> ItemFilter:
    """The item filter of a query string or form; a value that cannot be one is 400."""
    return _item_filter(_load(AdminItemFilterSchema(), values))


def _item_filter(loaded: dict[str, Any]) -> ItemFilter:
    return ItemFilter(loaded["status"], loaded["document_id"], loaded["filename"], loaded["error"])


def _load(schema: Schema, values: Any) -> dict[str, Any]:
    # A console link or form the admin edited by hand: 400, as for a bad form post.
    try:
        return schema.load(values)
    except ValidationError as error:
        raise BadRequest(describe_validation_errors(error.messages)) from None


def _safe_next(target: str | None) -> str:
    """Where to go back to: a page of the console (never another site), else the dashboard."""
    if target and _is_console_page(target):
        return target
    return url_for(".dashboard")


def _is_console_page(target: str) -> bool:
    # Our own pages send a URL-encoded path; a control character (CR/LF would
    # split the Location header, which werkzeug refuses with a 500 after the
    # action ran) means the value was made by hand.
    if not target.isprintable():
        return False
    parts = urlsplit(target)
    return not parts.scheme and not parts.netloc and parts.path.startswith("/admin/")


def _back() -> Response:
    return redirect(_safe_next(request.form.get("next")), 303)


def _items(n: int) -> str:
    return f"{n:,} item" if n == 1 else f"{n:,} items"
