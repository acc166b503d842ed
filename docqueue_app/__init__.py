"""docqueue: upload documents, process them through a durable database-backed queue.

Importing the package is cheap: ``create_app`` imports the app's parts when it
runs, so a process that needs only ``docqueue_app.processing`` (a fork server,
another program's worker) does not load the web app. Flask stays imported here:
multiprocessing runs the ``flask`` launcher again in each child it starts.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

# Next to the package, so `docqueue db upgrade` finds them from any folder.
MIGRATIONS_DIR = str(Path(__file__).resolve().parent.parent / "migrations")


def create_app(config: Mapping[str, Any] | None = None, *, serve_http: bool = True) -> Flask:
    """Application factory; ``config`` overrides the environment (keys without prefix).

    ``serve_http=False`` leaves out what only serves requests: the API with its
    OpenAPI document, the pages, the admin console, /metrics and the scheduler.
    The ``docqueue`` script builds that app for the commands that serve nothing
    (a worker, ``queue stats``, ``import``, ``db``), which then start without
    importing flask-smorest, apispec, flask-wtf or any view.
    """
    from flask.cli import NoAppException

    from . import cli, database
    from .config import ConfigError, load_config
    from .models import db

    app = Flask(__name__)
    try:
        load_config(app, config)
    except ConfigError as error:
        if cli.listing_flask_commands():
            raise NoAppException(error.format_message()) from None
        raise
    db.init_app(app)
    DeferredMigrate(app, db).init_app()
    database.init_app(app)
    if serve_http:
        _add_request_handling(app)
    cli.init_app(app)
    return app


def warm_up(app: Flask, threads: int) -> None:
    """Pay now what a freshly started server's first requests would each pay: the
    encoding tables of an upload's type detection, a database connection per
    server thread (a worker's first upload took 47-67 ms, 27-30 ms after this)
    and the first full garbage collection."""
    from .database import open_pooled_connections
    from .processing.detection import load_text_detection

    load_text_detection()
    open_pooled_connections(app, threads)
    _freeze_boot_objects()


def _freeze_boot_objects() -> None:
    # The first full collection after start walks the ~100,000 objects the imports
    # made: 31-33 ms of one request's CPU in each gunicorn worker, which held the
    # GIL while that worker's other first requests waited (they took 45-63 ms, the
    # bare endpoint's 17-24). Collected once now, they are frozen: they live as
    # long as the process, and later collections no longer walk them.
    gc.collect()
    gc.freeze()


def _add_request_handling(app: Flask) -> None:
    """The blueprints, /metrics and the scheduler that starts when the app serves."""
    from . import admin, api, metrics, web
    from .form_parsing import DocqueueRequest
    from .queue import read_queue_stats, scheduler

    app.request_class = DocqueueRequest
    api.init_app(app)
    web.init_app(app)
    admin.init_app(app)
    metrics.init_app(app, read_queue_stats)
    scheduler.init_app(app)


class DeferredMigrate:
    """Flask-Migrate, set up on first use.

    Importing Flask-Migrate imports Alembic, the largest import of the app, which
    only the ``db`` commands and ``flask_migrate.upgrade()`` and its siblings
    need. Until then this object stands in ``app.extensions["migrate"]`` (where
    those functions and ``migrations/env.py`` look) and a stand-in ``db`` command
    in the CLI; the first attribute read or ``db`` command sets Flask-Migrate up,
    which puts its own objects in both places.
    """

    def __init__(self, app: Flask, db: SQLAlchemy) -> None:
        self._app = app
        self._db = db
        self._extension: Any = None

    def init_app(self) -> None:
        from .cli import DeferredCommand

        self._app.extensions["migrate"] = self
        self._app.cli.add_command(
            DeferredCommand("db", load=self.db_command, help="Perform database migrations.")
        )

    def set_up(self) -> Any:
        """Flask-Migrate's state of the app (its ``_MigrateConfig``), set up once."""
        if self._extension is None:
            from flask_migrate import Migrate

            Migrate(self._app, self._db, directory=MIGRATIONS_DIR, render_as_batch=True)
            self._extension = self._app.extensions["migrate"]
        return self._extension

    def db_command(self) -> Any:
        from flask_migrate.cli import db

        from .cli import EndsOnOutage

        self.set_up()
        return EndsOnOutage.like(db)  # `db upgrade` against a database down: one line

    def __getattr__(self, name: str) -> Any:
        # Only for names this object lacks: Flask-Migrate's own attributes.
        return getattr(self.set_up(), name)
