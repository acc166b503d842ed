"""Maintenance the scheduler and the standalone worker both run before they claim.

The rescuer hands back the items of lost workers; the pruner deletes old
finished items, once per cluster per hour.
"""

from __future__ import annotations

from flask import current_app
from sqlalchemy.orm import Session

from ..models import db
from .pruner import prune_if_due
from .rescuer import rescue_lost_items
from .service import DocumentQueueService


def run_maintenance() -> dict[str, int]:
    """One round of maintenance, inside an app context, in a session of its own."""
    with Session(db.engine) as session:
        service = DocumentQueueService(session)
        return {
            "rescued": rescue_lost_items(service),
            "pruned": prune_if_due(service, current_app.config["RETENTION_DAYS"]),
        }
