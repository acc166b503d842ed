"""Every migration can be rolled back and applied again, on both back ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect, text

from docqueue_app import MIGRATIONS_DIR, create_app
from docqueue_app.models import db
from tests.conftest import BASE_CONFIG
from tests.helpers import close_connections


@pytest.fixture
def app_on_empty_database(unmigrated_database_url: str) -> Iterator[Flask]:
    app = create_app({**BASE_CONFIG, "DATABASE_URL": unmigrated_database_url})
    with app.app_context():
        yield app
    close_connections(app)


def test_downgrading_to_base_leaves_nothing_and_upgrading_again_builds_the_models(
    app_on_empty_database,
):
    upgrade()
    downgrade(revision="base")

    assert docqueue_tables() == []
    assert docqueue_functions() == []
    upgrade()
    assert schema_differences() == []


def test_each_migration_rolls_back_and_applies_again(app_on_empty_database):
    previous = "base"
    for revision in revisions_oldest_first():
        upgrade(revision=revision)
        downgrade(revision=previous)
        upgrade(revision=revision)
        previous = revision

    assert schema_differences() == []


def revisions_oldest_first() -> list[str]:
    script = ScriptDirectory(MIGRATIONS_DIR)
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


def schema_differences() -> list:
    with db.engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), db.metadata)


def docqueue_tables() -> list[str]:
    with db.engine.connect() as connection:
        return [name for name in inspect(connection).get_table_names() if name != "alembic_version"]


def docqueue_functions() -> list[str]:
    """The functions and triggers migrations made (PostgreSQL's notifications, 0005)."""
    if db.engine.dialect.name != "postgresql":
        return []
    with db.engine.connect() as connection:
        return list(
            connection.execute(
                text("SELECT proname FROM pg_proc WHERE proname LIKE 'docqueue%'")
            ).scalars()
        )
