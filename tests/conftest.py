"""Fixtures: every test that takes ``app`` runs on SQLite and on PostgreSQL.

PostgreSQL is the server at 127.0.0.1:5432 (override with DOCQUEUE_TEST_POSTGRES_URL).
It is skipped when unreachable, except under CI=true, where that fails the run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade

from docqueue_app import create_app
from docqueue_app.models import db
from tests.e2e.server import stop_leftover_servers
from tests.helpers import close_connections

PG_ADMIN_URL = os.environ.get(
    "DOCQUEUE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
# One database per test run, so concurrent runs (developers, CI) never share rows.
PG_TEST_DATABASE = f"docqueue_test_{os.getpid()}"
TABLES = (
    "webhook_deliveries",
    "queue_attempts",
    "queue_items",
    "document_contents",
    "documents",
    "queue_state",
)

BASE_CONFIG: dict[str, Any] = {
    "TESTING": True,
    "SECRET_KEY": "test-secret",
    "SCHEDULER_ENABLED": False,
    "PROCESS_ISOLATION": "none",
    "RETRY_BASE_SECONDS": 10,
    "WTF_CSRF_ENABLED": False,
}


def _postgres_url(database: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


def _admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, connect_timeout=3, autocommit=True) as conn:
        conn.execute(sql)


def _create_test_database() -> str | None:
    """Create this run's database; None when done, else why PostgreSQL is unusable."""
    try:
        _admin(f'DROP DATABASE IF EXISTS "{PG_TEST_DATABASE}"')
        _admin(f'CREATE DATABASE "{PG_TEST_DATABASE}"')
    except psycopg.Error as exc:
        return str(exc).strip()
    return None


def _migrated_app(url: str) -> Flask:
    app = create_app({**BASE_CONFIG, "DATABASE_URL": url})
    with app.app_context():
        upgrade()
        db.engine.dispose()
    return app


@pytest.fixture(scope="module", autouse=True)
def no_server_outlives_its_module() -> Iterator[None]:
    """Module-scoped servers end with their module; any other left running is stopped."""
    yield
    stop_leftover_servers()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    reason = _create_test_database()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL is unreachable under CI=true: {reason}", pytrace=False)
        pytest.skip(f"PostgreSQL unreachable: {reason}")
    url = _postgres_url(PG_TEST_DATABASE)
    _migrated_app(url)
    yield url
    _admin(f'DROP DATABASE IF EXISTS "{PG_TEST_DATABASE}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database migrated once; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "docqueue.db"
    _migrated_app(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        url = request.getfixturevalue("postgresql_clean")
        return url
    path = tmp_path / "docqueue.db"
    shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgresql"])
def unmigrated_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database ``db upgrade`` never ran on: an empty file, an empty PostgreSQL database."""
    if request.param == "sqlite":
        path = tmp_path / "unmigrated.db"
        path.touch()  # an empty file is an empty SQLite database
        yield f"sqlite:///{path}"
        return
    request.getfixturevalue("postgres_url")  # reachable, else skipped (failed under CI=true)
    name = f"{PG_TEST_DATABASE}_unmigrated"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{name}"')
    yield _postgres_url(name)
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgresql_clean(postgres_url: str) -> str:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    return postgres_url


@contextmanager
def app_factory(database_url: str) -> Iterator[Callable[..., Flask]]:
    """Build apps on ``database_url`` (keyword arguments override the config); closed after."""
    apps: list[Flask] = []

    def factory(**overrides: Any) -> Flask:
        app = create_app({**BASE_CONFIG, "DATABASE_URL": database_url, **overrides})
        apps.append(app)
        return app

    yield factory
    for app in apps:
        close_connections(app)


@pytest.fixture
def make_app(database_url: str) -> Iterator[Callable[..., Flask]]:
    """Build an app on this test's database; keyword arguments override the config."""
    with app_factory(database_url) as factory:
        yield factory


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask):
    return app.test_cli_runner()


@pytest.fixture
def app_ctx(app: Flask) -> Iterator[Flask]:
    with app.app_context():
        yield app
