"""What the admin console reads: counts, throughput, filtered item lists, failed deliveries.

Read-only; every change goes through ``DocumentQueueService``. Counts must stay
fast on a table of millions of rows, so none of them scans: a count stops at
``COUNT_CAP`` rows (shown as "10,000+"), and on PostgreSQL a capped count is
paired with the planner's row estimate (shown as "≈ 312,000").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, func, literal, select, text

from ..database import database_now as queue_clock
from ..models import Document, QueueItem, WebhookDelivery, db
from ..queue import queries as queue_queries
from ..states import FINISHED_STATUSES, DeliveryStatus, ItemStatus

COUNT_CAP = 10_000
THROUGHPUT_MINUTES = 60


@dataclass(frozen=True)
class Count:
    """A row count that stops at COUNT_CAP; past it, exact is unknown."""

    value: int
    capped: bool = False
    estimate: int | None = None  # the planner's guess, for a capped count on PostgreSQL

    @property
    def label(self) -> str:
        return f"{self.value:,}+" if self.capped else f"{self.value:,}"

    @property
    def estimate_label(self) -> str | None:
        if not self.capped or self.estimate is None:
            return None
        return f"≈ {self.estimate:,} (estimate)"

    def as_json(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "capped": self.capped,
            "estimate": self.estimate,
            "label": self.label,
            "estimate_label": self.estimate_label,
        }


def capped_count(query: Select) -> Count:
    """How many rows ``query`` has, reading at most COUNT_CAP + 1 of them."""
    limited = query.order_by(None).limit(COUNT_CAP + 1).subquery()
    found = db.session.scalar(select(func.count()).select_from(limited)) or 0
    if found > COUNT_CAP:
        return Count(COUNT_CAP, capped=True)
    return Count(found)


def database_now() -> datetime:
    """The database's clock, as the queue judges due times by it."""
    return queue_clock(db.session)


def _is_postgresql() -> bool:
    return db.session.get_bind().dialect.name == "postgresql"


# -- the dashboard's figures -----------------------------------------------------


def status_counts() -> dict[str, Count]:
    """Items per status; each walks the status index and stops at the cap."""
    counts = {}
    for status in ItemStatus:
        count = capped_count(select(literal(1)).where(_status_is(status)))
        if count.capped and _is_postgresql():
            count = Count(count.value, True, _planner_estimate(status))
        counts[status.value] = count
    return counts


def _status_is(status: ItemStatus) -> ColumnElement[bool]:
    # Written into the SQL, not bound, so the planner sees which partial indexes apply.
    return QueueItem.status == literal(status.value, literal_execute=True)


def _planner_estimate(status: ItemStatus) -> int | None:
    """PostgreSQL's estimate of the rows of one status, from its statistics (no scan)."""
    # ``status`` is one of our own enum values, never user input.
    plan = db.session.scalar(
        text(
            "EXPLAIN (FORMAT JSON) SELECT 1 FROM queue_items "
            f"WHERE status = '{ItemStatus(status).value}'"
        )
    )
    try:
        return int(plan[0]["Plan"]["Plan Rows"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def total_of(counts: dict[str, Count]) -> Count:
    capped = any(count.capped for count in counts.values())
    estimates = [c.estimate if c.capped else c.value for c in counts.values()]
    estimate = sum(estimates) if capped and None not in estimates else None
    return Count(sum(count.value for count in counts.values()), capped, estimate)


def oldest_due_age_seconds(now: datetime) -> float | None:
    """Seconds since the run_at of the oldest due pending item (None when none is due)."""
    oldest = db.session.scalar(
        select(func.min(QueueItem.run_at)).where(
            _status_is(ItemStatus.PENDING), QueueItem.run_at <= now
        )
    )
    return round((now - oldest).total_seconds(), 1) if oldest else None


@dataclass(frozen=True)
class MinuteBar:
    minute: datetime
    completed: int
    failed: int


@dataclass
class Throughput:
    """Items finished per minute over the last hour, oldest minute first."""

    bars: list[MinuteBar] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max([bar.completed + bar.failed for bar in self.bars] + [1])

    @property
    def completed(self) -> int:
        return sum(bar.completed for bar in self.bars)

    @property
    def failed(self) -> int:
        return sum(bar.failed for bar in self.bars)


def throughput(now: datetime) -> Throughput:
    """Completed and failed items per minute, read through ``(status, finished_at)``."""
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=THROUGHPUT_MINUTES)
    if _is_postgresql():
        minute = func.date_trunc("minute", QueueItem.finished_at)
    else:  # naive UTC text: 'YYYY-MM-DD HH:MM' is its minute
        minute = func.substr(QueueItem.finished_at, 1, 16)
    rows = db.session.execute(
        select(minute, QueueItem.status, func.count())
        .where(
            QueueItem.status.in_([ItemStatus.COMPLETED.value, ItemStatus.FAILED.value]),
            QueueItem.finished_at >= start,
        )
        .group_by(minute, QueueItem.status)
    ).all()
    per_minute: dict[datetime, dict[str, int]] = {}
    for at, status, count in rows:
        per_minute.setdefault(_minute_of(at), {})[status] = count
    bars = []
    for index in range(THROUGHPUT_MINUTES):
        at = start + timedelta(minutes=index)
        counts = per_minute.get(at, {})
        bars.append(MinuteBar(at, counts.get("completed", 0), counts.get("failed", 0)))
    return Throughput(bars)


def _minute_of(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(second=0, microsecond=0)


# -- filtered item lists -----------------------------------------------------------


@dataclass(frozen=True)
class ItemFilter:
    """What the admin narrowed the item list to; empty fields do not filter."""

    status: str | None = None
    document_id: int | None = None
    filename: str | None = None
    error: str | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if self.status:
            where.append(_status_is(ItemStatus(self.status)))
        if self.document_id is not None:
            where.append(QueueItem.document_id == self.document_id)
        if self.filename:
            named = select(Document.id).where(
                Document.filename.icontains(self.filename, autoescape=True)
            )
            where.append(QueueItem.document_id.in_(named))
        if self.error:
            where.append(QueueItem.last_error.icontains(self.error, autoescape=True))
        return where

    def query_args(self) -> dict[str, Any]:
        """The filter as URL query arguments (empty ones left out)."""
        args = {
            "status": self.status,
            "document_id": self.document_id,
            "filename": self.filename,
            "error": self.error,
        }
        return {name: value for name, value in args.items() if value not in (None, "")}

    @property
    def active(self) -> bool:
        return bool(self.query_args())


@dataclass(frozen=True)
class ItemRow:
    item: QueueItem
    filename: str | None


R = TypeVar("R")


@dataclass(frozen=True)
class RowPage(Generic[R]):
    """One page of a console list, newest first; its total is a capped count."""

    rows: list[R]
    page: int
    per_page: int
    total: Count
    has_next: bool

    @property
    def page_count_label(self) -> str:
        pages = max(1, -(-self.total.value // self.per_page))
        return f"{pages:,}+" if self.total.capped else f"{pages:,}"


ItemPage = RowPage[ItemRow]


def _page_of(
    query: Select, count_query: Select, page: int, per_page: int
) -> tuple[list[Any], Count, bool]:
    """The rows of one page of ``query``, the (capped) total, and whether a next page exists.

    One row past the page says whether there is a next page; only then (or past
    the end) is anything counted: on the last page, what came before it and what
    is on it is everything.
    """
    offset = (page - 1) * per_page
    rows = db.session.execute(query.limit(per_page + 1).offset(offset)).all()
    has_next = len(rows) > per_page
    if has_next or (not rows and page > 1):
        total = capped_count(count_query)
    else:
        total = Count(offset + len(rows))
    return rows[:per_page], total, has_next


def list_items(item_filter: ItemFilter, page: int, per_page: int) -> ItemPage:
    """One page of matching items, newest first, and their count (capped)."""
    rows, total, has_next = _page_of(
        select(QueueItem, Document.filename)
        .outerjoin(Document, Document.id == QueueItem.document_id)
        .where(*item_filter.conditions())
        .order_by(QueueItem.id.desc()),
        select(QueueItem.id).where(*item_filter.conditions()),
        page,
        per_page,
    )
    return ItemPage(
        [ItemRow(item, filename) for item, filename in rows], page, per_page, total, has_next
    )


# Which items a bulk action can change: the same rules the service applies.
RETRYABLE = (ItemStatus.FAILED, ItemStatus.CANCELLED)
CANCELLABLE = (ItemStatus.PENDING, ItemStatus.IN_PROGRESS)


def _actionable(item_filter: ItemFilter, statuses: tuple[ItemStatus, ...]) -> Select:
    query = select(QueueItem.id).where(
        *item_filter.conditions(), QueueItem.status.in_([s.value for s in statuses])
    )
    if statuses == RETRYABLE:
        # Only a document's latest item can be retried.
        query = query.where(queue_queries.is_latest_of_its_document())
    return query


def count_actionable(item_filter: ItemFilter, statuses: tuple[ItemStatus, ...]) -> Count:
    return capped_count(_actionable(item_filter, statuses))


def actionable_ids(
    item_filter: ItemFilter, statuses: tuple[ItemStatus, ...], limit: int
) -> list[int]:
    """Ids of up to ``limit`` matching items the action can change, newest first."""
    query = _actionable(item_filter, statuses).order_by(QueueItem.id.desc()).limit(limit)
    return list(db.session.scalars(query))


def count_purgeable(older_than_days: float, now: datetime) -> Count:
    """How many items a purge would delete (``finished_before`` says which)."""
    cutoff = now - timedelta(days=older_than_days)
    return capped_count(queue_queries.finished_before(cutoff, FINISHED_STATUSES, COUNT_CAP))


# -- webhook deliveries ------------------------------------------------------------

# Written into the SQL, like _status_is, so the (status, id) index is seen to apply.
_FAILED_DELIVERY = WebhookDelivery.status == literal(
    DeliveryStatus.FAILED.value, literal_execute=True
)


@dataclass(frozen=True)
class DeliveryRow:
    delivery: WebhookDelivery
    filename: str | None  # None once its document was deleted (the delivery is kept)


DeliveryPage = RowPage[DeliveryRow]


def failed_delivery_count() -> Count:
    return capped_count(select(literal(1)).where(_FAILED_DELIVERY))


def list_failed_deliveries(page: int, per_page: int) -> DeliveryPage:
    """One page of the deliveries that ran out of attempts, newest first."""
    rows, total, has_next = _page_of(
        select(WebhookDelivery, Document.filename)
        .outerjoin(Document, Document.id == WebhookDelivery.document_id)
        .where(_FAILED_DELIVERY)
        .order_by(WebhookDelivery.id.desc()),
        select(WebhookDelivery.id).where(_FAILED_DELIVERY),
        page,
        per_page,
    )
    deliveries = [DeliveryRow(delivery, filename) for delivery, filename in rows]
    return DeliveryPage(deliveries, page, per_page, total, has_next)


def find_delivery(delivery_id: str) -> WebhookDelivery | None:
    return db.session.scalar(
        select(WebhookDelivery).where(WebhookDelivery.delivery_id == delivery_id)
    )
