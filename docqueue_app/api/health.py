"""/healthz (the database answers) and /readyz (and the scheduler ticks)."""

from __future__ import annotations

from typing import Any

from flask import current_app

from ..database import OK, database_state
from ..queue.scheduler import get_scheduler
from ..schemas import HealthSchema, ReadinessSchema
from .blueprint import ApiBlueprint

blp = ApiBlueprint("health", __name__, description="Liveness and readiness probes.")

ERROR, STALE = "error", "stale"


@blp.route("/healthz", methods=["GET"])
@blp.alt_response(200, schema=HealthSchema, description="The database answers", success=True)
@blp.alt_response(
    503, schema=HealthSchema, description="The database does not answer, or is read-only"
)
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


def _report(healthy: bool, **checks: str) -> tuple[dict[str, Any], int]:
    return {"status": OK if healthy else ERROR, **checks}, 200 if healthy else 503
