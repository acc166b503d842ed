"""docqueue: upload documents, process them through a durable database-backed queue."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from flask_migrate import Migrate

from . import admin, api, cli, database, metrics, web
from .config import load_config
from .models import db
from .queue import read_queue_stats, scheduler

# Next to the package, so `docqueue db upgrade` finds them from any folder.
MIGRATIONS_DIR = str(Path(__file__).resolve().parent.parent / "migrations")

migrate = Migrate()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Application factory; ``config`` overrides the environment (keys without prefix)."""
    app = Flask(__name__)
    load_config(app, config)
    db.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR, render_as_batch=True)
    database.init_app(app)
    api.init_app(app)
    web.init_app(app)
    admin.init_app(app)
    metrics.init_app(app, read_queue_stats)
    scheduler.init_app(app)
    cli.init_app(app)
    return app
