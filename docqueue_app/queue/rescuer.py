"""The rescuer: hands back the items of workers that died or hung (River's JobRescuer).

An item's lease runs out when its worker stopped extending it. The service
rescues such items in batches (each item in a savepoint of its own, so one that
cannot be written never keeps the rest stuck); the rescuer sweeps until none is
left. Claims also rescue before they look for due work, so no stuck item waits
for a maintenance round.
"""

from __future__ import annotations

from .service import MAINTENANCE_BATCH, DocumentQueueService


def rescue_lost_items(service: DocumentQueueService) -> int:
    """Rescue every item whose lease has expired; how many were handed back or failed."""
    rescued = 0
    while True:
        batch = service.rescue_expired_leases(limit=MAINTENANCE_BATCH)
        rescued += batch
        if batch < MAINTENANCE_BATCH:
            return rescued
