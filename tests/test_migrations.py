"""The migrations build exactly the schema the models describe, on both back ends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import upgrade
from sqlalchemy import text

from docqueue_app import create_app
from docqueue_app.models import db
from docqueue_app.queue import DocumentQueueService, process_document_queue
from tests.conftest import BASE_CONFIG


def test_models_and_migrations_agree(app):
    with app.app_context(), db.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        differences = compare_metadata(context, db.metadata)
    assert differences == []


def test_upgrading_an_sqlite_database_keeps_every_row_and_stops_reusing_ids(tmp_path):
    # 0008 rebuilds two tables that others refer to, on a database with data in it.
    app = create_app({**BASE_CONFIG, "DATABASE_URL": f"sqlite:///{tmp_path / 'old.db'}"})
    with app.app_context():
        upgrade(revision="0007")
        service = DocumentQueueService()
        for name in ("first.txt", "second.txt"):
            service.submit_document(name, name.encode(), "text/plain", 5)
        process_document_queue()
        before = table_counts()

        upgrade()

        assert table_counts() == before
        assert "priority DESC" in index_sql("ix_queue_items_claim")
        newest, _ = service.submit_document("third.txt", b"third", "text/plain", 5)
        service.delete_document(newest.id)
        again, _ = service.submit_document("fourth.txt", b"fourth", "text/plain", 5)
        assert again.id > newest.id
        db.engine.dispose()


def table_counts() -> dict[str, int]:
    tables = ["documents", "document_contents", "queue_items", "queue_attempts"]
    with db.engine.connect() as connection:  # not the session's snapshot
        return {
            table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar()
            for table in tables
        }


def index_sql(name: str) -> str:
    with db.engine.connect() as connection:
        return connection.execute(
            text("SELECT sql FROM sqlite_master WHERE name = :name"), {"name": name}
        ).scalar()
