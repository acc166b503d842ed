"""The webhook signature (SPEC §8): ``X-Docqueue-Signature: t=<unix seconds>,v1=<hex>``.

``v1`` is the HMAC-SHA256, keyed with ``DOCQUEUE_WEBHOOK_SECRET``, of the
attempt's time, a dot and the raw body (Stripe's scheme): the time inside the
signed text lets a receiver refuse a replayed old request, and signing the raw
bytes spares it from re-serializing JSON exactly as the sender did.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Docqueue-Signature"


def signature(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header's value for ``body`` sent now (or at ``timestamp``, in unix seconds)."""
    stamp = int(time.time()) if timestamp is None else timestamp
    return f"t={stamp},v1={_digest(secret, stamp, body)}"


def _digest(secret: str, stamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), b"%d." % stamp + body, hashlib.sha256).hexdigest()
