"""/healthz (the database answers) and /readyz (and the scheduler ticks)."""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ..models import db
from ..queue.scheduler import get_scheduler
from ..schemas import HealthSchema, ReadinessSchema
from .blueprint import ApiBlueprint

log = logging.getLogger(__name__)

blp = ApiBlueprint("health", __name__, description="Liveness and readiness probes.")

OK, ERROR, UNREACHABLE, STALE = "ok", "error", "unreachable", "stale"


@blp.route("/healthz", methods=["GET"])
@blp.alt_response(200, schema=HealthSchema, description="The database answers", success=True)
@blp.alt_response(503, schema=HealthSchema, description="The database does not answer")
def healthz() -> tuple[dict[str, Any], int]:
    database = database_state()
    return _report(database == OK, database=database)


@blp.route("/readyz", methods=["GET"])
@blp.alt_response(200, schema=ReadinessSchema, description="Ready to serve", success=True)
@blp.alt_response(503, schema=ReadinessSchema, description="Database down or scheduler stale")
def readyz() -> tuple[dict[str, Any], int]:
    database = database_state()
    scheduler = get_scheduler(current_app).state()
    return _report(database == OK and scheduler != STALE, database=database, scheduler=scheduler)


def database_state() -> str:
    try:
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
    except SQLAlchemyError as exc:
        log.warning("database unreachable: %s", exc)
        db.session.rollback()
        return UNREACHABLE
    return OK


def _report(healthy: bool, **checks: str) -> tuple[dict[str, Any], int]:
    return {"status": OK if healthy else ERROR, **checks}, 200 if healthy else 503
