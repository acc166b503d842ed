"""Configuration: the one place that reads the environment.

Settings follow Flask's convention: ``DOCQUEUE_<NAME>`` environment variables become
``app.config["<NAME>"]`` (parsed as JSON where possible, so ``1.5`` and ``true`` work),
``DATABASE_URL`` is read as is, and the mapping given to ``create_app`` wins over both.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from .processing.options import OCR_AUTO, OCR_MODES

ENV_PREFIX = "DOCQUEUE"

DEFAULTS: dict[str, Any] = {
    "SCHEDULER_ENABLED": True,
    "POLL_INTERVAL": 1.0,
    "BATCH_SIZE": 10,
    # Documents processed at once by the in-app scheduler of a host (one
    # gunicorn worker per host runs it; `queue worker --concurrency` is per process).
    "CONCURRENCY": 2,
    "MAX_ATTEMPTS": 5,
    "RETRY_BASE_SECONDS": 10.0,
    "RETRY_MAX_SECONDS": 3600.0,
    "LEASE_SECONDS": 300.0,
    "MAX_UPLOAD_MB": 50.0,
    "CRON_SECRET": None,
    "ADMIN_PASSWORD": None,
    "API_TOKEN": None,
    "PROCESSOR": "docqueue_app.processing:extract",
    "PROCESS_ISOLATION": "subprocess",
    "PROCESS_MEMORY_MB": 1024,
    "PROCESS_TIMEOUT_SECONDS": 300.0,
    "RETENTION_DAYS": 30,
    "OCR": OCR_AUTO,
    "WEBHOOK_URL": None,
    "WEBHOOK_SECRET": None,
    "WEBHOOK_MAX_ATTEMPTS": 8,
    "WEBHOOK_TIMEOUT_SECONDS": 10.0,
    "WEBHOOK_ALLOW_PRIVATE": False,
}

# Secrets are compared byte for byte, so they must never be parsed as JSON
# (a token such as ``123`` or ``true`` would otherwise change type).
SECRET_KEYS = ("CRON_SECRET", "ADMIN_PASSWORD", "API_TOKEN", "WEBHOOK_SECRET")

_FLOAT_KEYS = (
    "POLL_INTERVAL",
    "RETRY_BASE_SECONDS",
    "RETRY_MAX_SECONDS",
    "LEASE_SECONDS",
    "MAX_UPLOAD_MB",
    "PROCESS_TIMEOUT_SECONDS",
    "WEBHOOK_TIMEOUT_SECONDS",
)
_INT_KEYS = (
    "BATCH_SIZE",
    "CONCURRENCY",
    "MAX_ATTEMPTS",
    "PROCESS_MEMORY_MB",
    "RETENTION_DAYS",
    "WEBHOOK_MAX_ATTEMPTS",
)
_BOOL_KEYS = ("SCHEDULER_ENABLED", "WEBHOOK_ALLOW_PRIVATE")
_ISOLATION_MODES = ("subprocess", "none")

SQLITE_BUSY_TIMEOUT_SECONDS = 30
# PostgreSQL connections must fail rather than hang: a connect timeout (an
# unreachable host answers nothing), TCP keepalives and a user timeout (a
# connection dropped silently, by a failover or a firewall, is noticed in about
# 30 s instead of the kernel's 15 minutes), and a statement timeout (nothing
# docqueue runs takes a minute; a statement that does is stuck behind a lock).
# Sessions run in UTC, as docqueue's timestamps are, whatever the server's default:
# psycopg then reads a timestamptz tagged with datetime.UTC itself, which costs
# nothing to convert, where a zone such as Etc/UTC cost a claim of 100 more CPU in
# reading its five timestamps a row than running the claim (0.39 against 0.22 ms).
POSTGRESQL_CONNECT_ARGS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
    "options": "-c statement_timeout=60s -c TimeZone=UTC",
}

# Multipart framing around the file: headers, boundaries and the small form fields.
_MULTIPART_OVERHEAD_BYTES = 1024 * 1024


def load_config(app: Flask, overrides: Mapping[str, Any] | None = None) -> None:
    """Fill ``app.config`` from defaults, the environment and ``overrides``, then check it."""
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env(ENV_PREFIX)
    for key in SECRET_KEYS:
        raw = os.environ.get(f"{ENV_PREFIX}_{key}")
        if raw is not None:
            app.config[key] = raw
    app.config["DATABASE_URL"] = os.environ.get("DATABASE_URL") or None
    if overrides:
        app.config.update(overrides)

    _coerce_types(app.config)
    _validate(app.config)
    app.config["SQLALCHEMY_DATABASE_URI"] = normalize_database_url(
        app.config["DATABASE_URL"] or default_sqlite_url(app)
    )
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", engine_options(app.config))
    app.config["MAX_CONTENT_LENGTH"] = upload_limit_bytes(app.config) + _MULTIPART_OVERHEAD_BYTES
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _instance_secret_key(app)


def upload_limit_bytes(config: Mapping[str, Any]) -> int:
    return int(config["MAX_UPLOAD_MB"] * 1024 * 1024)


def default_sqlite_url(app: Flask) -> str:
    os.makedirs(app.instance_path, exist_ok=True)
    return f"sqlite:///{Path(app.instance_path) / 'docqueue.db'}"


def normalize_database_url(url: str) -> str:
    """Map every spelling of PostgreSQL onto the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def engine_options(config: Mapping[str, Any]) -> dict[str, Any]:
    url = normalize_database_url(config["DATABASE_URL"] or "sqlite://")
    if url.startswith("sqlite"):
        # The busy timeout lets concurrent writers (scheduler, workers, requests)
        # wait for the write lock instead of failing with "database is locked".
        return {
            "connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False}
        }
    # No pool_pre_ping: database.py pings only connections that sat idle.
    return {"connect_args": POSTGRESQL_CONNECT_ARGS}


def _coerce_types(config: dict[str, Any]) -> None:
    for key in _FLOAT_KEYS:
        config[key] = float(config[key])
    for key in _INT_KEYS:
        config[key] = int(config[key])
    for key in _BOOL_KEYS:
        config[key] = _as_bool(config[key])
    for key in (*SECRET_KEYS, "WEBHOOK_URL"):
        if config.get(key) is not None:
            config[key] = str(config[key]) or None
    config["OCR"] = str(config["OCR"]).strip().lower()


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _validate(config: Mapping[str, Any]) -> None:
    if config["PROCESS_ISOLATION"] not in _ISOLATION_MODES:
        raise ValueError(
            f"DOCQUEUE_PROCESS_ISOLATION must be one of {_ISOLATION_MODES}, "
            f"not {config['PROCESS_ISOLATION']!r}"
        )
    if config["OCR"] not in OCR_MODES:
        raise ValueError(f"DOCQUEUE_OCR must be one of {OCR_MODES}, not {config['OCR']!r}")
    positive = ("POLL_INTERVAL", "LEASE_SECONDS", "BATCH_SIZE", "CONCURRENCY", "MAX_ATTEMPTS")
    for key in (*positive, "WEBHOOK_MAX_ATTEMPTS", "WEBHOOK_TIMEOUT_SECONDS"):
        if config[key] <= 0:
            raise ValueError(f"DOCQUEUE_{key} must be positive")


def _instance_secret_key(app: Flask) -> str:
    """A key kept in the instance folder, so every gunicorn worker signs CSRF tokens alike."""
    os.makedirs(app.instance_path, exist_ok=True)
    path = Path(app.instance_path) / "secret_key"
    if not path.exists():
        # Written aside then linked: two workers starting at once must agree on one key.
        scratch = path.with_name(f"secret_key.{os.getpid()}")
        scratch.write_text(secrets.token_hex(32))
        scratch.chmod(0o600)
        try:
            os.link(scratch, path)
        except FileExistsError:
            pass
        finally:
            scratch.unlink()
    return path.read_text().strip()
