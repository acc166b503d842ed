"""Maintenance the scheduler and the standalone worker both run: the pruner.

(The rescuer of expired leases, ``DocumentQueueService.rescue_expired_leases``,
runs before every claim, so no stuck item waits for a maintenance round.)
"""

from __future__ import annotations

import time

from flask import current_app
from sqlalchemy.orm import Session

from ..models import db
from .service import DocumentQueueService

PRUNE_EVERY_SECONDS = 3600.0
_last_prune = {"at": float("-inf")}


def run_maintenance() -> int:
    """Prune finished items past the retention period, about once an hour per process."""
    if time.monotonic() - _last_prune["at"] < PRUNE_EVERY_SECONDS:
        return 0
    _last_prune["at"] = time.monotonic()
    with Session(db.engine) as session:
        return DocumentQueueService(session).prune_finished_items(
            current_app.config["RETENTION_DAYS"]
        )
