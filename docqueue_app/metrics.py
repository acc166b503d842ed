"""Prometheus metrics: counters kept by the processes, queue depth read from the database.

Under gunicorn the counters live in prometheus-client's multiprocess mode
(``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR``), so every worker's counts
add up; queue depth is read from the database at scrape time, so it is the same
whichever process answers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, literal, select
from sqlalchemy.orm import Session

from .database import database_clock
from .metrics_files import LockedMultiProcessCollector
from .models import QueueAttempt, QueueItem, WebhookDelivery, db
from .states import DeliveryStatus, ItemStatus

EXTENSION = "docqueue_metrics"
log = logging.getLogger(__name__)

# Under gunicorn each kind of metric is a file per worker, which gunicorn.conf.py
# allocates before the worker starts (METRIC_FILE_KINDS): a new kind goes there too.
UPLOADS = Counter(
    "docqueue_uploads", "Documents received by upload", ["result"]
)  # result: accepted | duplicate
PROCESSING_OUTCOMES = Counter(
    "docqueue_processing_outcomes", "Processing attempts by outcome", ["outcome"]
)  # outcome: completed | retried | failed
RESCUED_ITEMS = Counter(
    "docqueue_rescued_items",
    "Items whose worker stopped extending the lease (died or hung), handed back or failed",
)
PROCESSING_SECONDS = Histogram(
    "docqueue_processing_seconds",
    "Time to process one document, isolation included",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)

# Every label shows from the start (at 0), so rates and alerts have a series to read.
# Each labelled series is looked up once: ``labels()`` checks and locks on every call,
# and a worker counts every document.
_UPLOAD_COUNTERS = {result: UPLOADS.labels(result=result) for result in ("accepted", "duplicate")}
_OUTCOME_COUNTERS = {
    outcome: PROCESSING_OUTCOMES.labels(outcome=outcome)
    for outcome in ("completed", "retried", "failed")
}

blueprint = Blueprint("metrics", __name__)


def record_upload(duplicate: bool) -> None:
    _UPLOAD_COUNTERS["duplicate" if duplicate else "accepted"].inc()


def record_outcome(outcome: str) -> None:
    _OUTCOME_COUNTERS[outcome].inc()


def record_rescues(count: int) -> None:
    RESCUED_ITEMS.inc(count)


class QueueDepthCollector(Collector):
    """Queue items per status and the age of the oldest due item, from the database."""

    def __init__(self, read_queue_stats: Callable[[], dict[str, Any]]) -> None:
        self.read_queue_stats = read_queue_stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self.read_queue_stats()
        depth = GaugeMetricFamily(
            "docqueue_queue_items", "Queue items by status", labels=["status"]
        )
        for status in ItemStatus:
            depth.add_metric([status], stats[status])
        yield depth
        yield GaugeMetricFamily(
            "docqueue_oldest_pending_age_seconds",
            "Seconds the oldest due pending item has waited",
            value=stats["oldest_pending_age_seconds"] or 0,
        )
        # A paused queue's backlog grows like a stuck one's: this tells them apart.
        yield GaugeMetricFamily(
            "docqueue_queue_paused", "1 while the queue is paused", value=int(stats["paused"])
        )


class OperatorSignalsCollector(Collector):
    """What the queue's counts do not show: webhooks, lost leases, silent workers."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def collect(self) -> Iterator[GaugeMetricFamily]:
        signals = read_operator_signals(self.session)
        deliveries = GaugeMetricFamily(
            "docqueue_webhook_deliveries",
            "Webhook deliveries still owed (pending) or given up on (failed, until pruned)",
            labels=["status"],
        )
        for status in (DeliveryStatus.PENDING, DeliveryStatus.FAILED):
            deliveries.add_metric([status], signals[status])
        yield deliveries
        yield GaugeMetricFamily(
            "docqueue_oldest_due_webhook_delivery_age_seconds",
            "Seconds the oldest due webhook delivery has waited to be sent",
            value=_age(signals["now"], signals["oldest_due_delivery"]) or 0,
        )
        yield GaugeMetricFamily(
            "docqueue_expired_leases",
            "Items in progress whose worker stopped extending the lease (died or hung), "
            "not yet rescued",
            value=signals["expired_leases"],
        )
        last_claim = GaugeMetricFamily(
            "docqueue_last_claim_age_seconds",
            "Seconds since any worker last claimed an item (absent before the first claim)",
        )
        age = _age(signals["now"], signals["last_claim"])
        if age is not None:
            last_claim.add_metric([], age)
        yield last_claim


def read_operator_signals(session: Session) -> dict[str, Any]:
    """The database's time and the signals above, in one statement of indexed reads.

    Statuses are written into the statement (not bound), so SQLite can use the
    partial indexes over pending deliveries and in-progress items.
    """
    now = database_clock(session.get_bind().dialect.name)

    def status_is(column: Any, status: str) -> Any:
        return column == literal(str(status), literal_execute=True)

    def deliveries(status: str) -> Any:
        where = status_is(WebhookDelivery.status, status)
        return select(func.count()).select_from(WebhookDelivery).where(where).scalar_subquery()

    oldest_due_delivery = select(func.min(WebhookDelivery.next_attempt_at)).where(
        status_is(WebhookDelivery.status, DeliveryStatus.PENDING),
        WebhookDelivery.next_attempt_at <= now,
    )
    expired_leases = (
        select(func.count())
        .select_from(QueueItem)
        .where(
            status_is(QueueItem.status, ItemStatus.IN_PROGRESS),
            QueueItem.lease_expires_at <= now,
        )
    )
    # Every claim starts an attempt row, so the newest one's start is the last claim.
    last_claim = select(QueueAttempt.started_at).order_by(QueueAttempt.id.desc()).limit(1)
    row = session.execute(
        select(
            now.label("now"),
            deliveries(DeliveryStatus.PENDING).label(DeliveryStatus.PENDING),
            deliveries(DeliveryStatus.FAILED).label(DeliveryStatus.FAILED),
            oldest_due_delivery.scalar_subquery().label("oldest_due_delivery"),
            expired_leases.scalar_subquery().label("expired_leases"),
            last_claim.scalar_subquery().label("last_claim"),
        )
    ).one()
    return row._asdict()


def _age(now: Any, then: Any) -> float | None:
    return None if then is None else round(max((now - then).total_seconds(), 0.0), 3)


@blueprint.get("/metrics")
def metrics() -> Response:
    database = CollectorRegistry(auto_describe=False)
    database.register(QueueDepthCollector(current_app.extensions[EXTENSION]))
    database.register(OperatorSignalsCollector(db.session))
    body = generate_latest(_process_registry()) + generate_latest(database)
    return Response(body, content_type=CONTENT_TYPE_LATEST)


def _process_registry() -> CollectorRegistry:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    # Locked: gunicorn's master merges dead workers' files meanwhile (metrics_files.py).
    LockedMultiProcessCollector(registry)
    return registry


def init_app(app: Flask, read_queue_stats: Callable[[], dict[str, Any]]) -> None:
    """Serve /metrics; ``read_queue_stats`` gives the queue's counts at scrape time.

    (Handed in, not imported, so the queue can count outcomes here without an
    import cycle.)
    """
    app.extensions[EXTENSION] = read_queue_stats
    app.register_blueprint(blueprint)


def serve_process_metrics(host: str, port: int) -> None:
    """Serve this process's counters at http://host:port/metrics, from a thread of its own.

    For a standalone worker: the web app's /metrics counts gunicorn's processes only.
    The queue's gauges are left to the web app, where every host reads the same.
    Raises OSError when the address cannot be listened on.
    """
    start_http_server(port, addr=host, registry=_process_registry())
    log.info("metrics on http://%s:%d/metrics", host, port)
