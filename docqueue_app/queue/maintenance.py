"""Maintenance the scheduler and the standalone worker both run after a batch.

The rescuer sweeps every expired lease (claims rescue too, but not while the
queue is paused); the pruner deletes old finished items, once per cluster per
hour. A round runs at most once a minute per process, so an idle poll costs no
query of its own here.
"""

from __future__ import annotations

import time

from flask import current_app
from sqlalchemy.orm import Session

from ..database import is_outage, report_failure, report_success
from ..models import db
from .pruner import prune_if_due
from .rescuer import rescue_lost_items
from .service import DocumentQueueService

MAINTENANCE_EVERY_SECONDS = 60.0
# A round as the log names it when it fails (report_failure).
MAINTENANCE = "queue maintenance"

_last_round = {"at": float("-inf")}


def run_maintenance() -> dict[str, int]:
    """A round of maintenance when one is due in this process, inside an app context."""
    if time.monotonic() - _last_round["at"] < MAINTENANCE_EVERY_SECONDS:
        return {"rescued": 0, "pruned": 0}
    _last_round["at"] = time.monotonic()
    try:
        with Session(db.engine) as session:
            service = DocumentQueueService(session)
            done = {
                "rescued": rescue_lost_items(service),
                "pruned": prune_if_due(service, current_app.config["RETENTION_DAYS"]),
            }
    except Exception as exc:
        if is_outage(exc):
            raise  # the pass's too: it backs off, and the outage is told once
        # Not the pass's failure: its documents were processed and recorded. Told as
        # "queue pass failed", it sent the operator looking at claims and processors.
        report_failure(exc, MAINTENANCE)
        return {"rescued": 0, "pruned": 0}
    report_success(MAINTENANCE)
    return done
