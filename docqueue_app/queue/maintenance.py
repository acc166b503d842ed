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

from ..models import db
from .pruner import prune_if_due
from .rescuer import rescue_lost_items
from .service import DocumentQueueService

MAINTENANCE_EVERY_SECONDS = 60.0

_last_round = {"at": float("-inf")}


def run_maintenance() -> dict[str, int]:
    """A round of maintenance when one is due in this process, inside an app context."""
    if time.monotonic() - _last_round["at"] < MAINTENANCE_EVERY_SECONDS:
        return {"rescued": 0, "pruned": 0}
    _last_round["at"] = time.monotonic()
    with Session(db.engine) as session:
        service = DocumentQueueService(session)
        return {
            "rescued": rescue_lost_items(service),
            "pruned": prune_if_due(service, current_app.config["RETENTION_DAYS"]),
        }
