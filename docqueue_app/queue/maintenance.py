"""Small maintenance jobs the scheduler and the worker both run: rescuer and pruner."""

from __future__ import annotations

import time

from flask import current_app
from sqlalchemy.orm import Session

from ..models import db
from .service import DocumentQueueService

PRUNE_EVERY_SECONDS = 3600.0
_last_prune = {"at": float("-inf")}


def run_maintenance() -> dict[str, int]:
    """Rescue items whose lease ran out; prune old finished items about once an hour."""
    with Session(db.engine) as session:
        service = DocumentQueueService(session)
        rescued = service.rescue_expired_leases()
        pruned = 0
        if time.monotonic() - _last_prune["at"] >= PRUNE_EVERY_SECONDS:
            _last_prune["at"] = time.monotonic()
            pruned = service.prune_finished_items(current_app.config["RETENTION_DAYS"])
    return {"rescued": rescued, "pruned": pruned}
