"""The upload path: what an upload writes, how it reaches the database, and many at once.

An accepted upload writes its document, its bytes and its queue item in one
transaction and reads nothing first (a duplicate is found by the unique sha256,
not by a SELECT before the insert). ``submit_documents`` stores many files in
one transaction, all or none. Faults are real: a trigger in the database
refuses one file's bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from docqueue_app.models import Document, QueueItem, db
from docqueue_app.queue import DocumentQueueService
from docqueue_app.queue.service import NewDocument
from tests.api import document_count
from tests.helpers import (
    backend_name,
    execute_sql,
    statements_run,
    upload,
)
from tests.web.test_pages import submit_form

REFUSED = b"bytes the database refuses"

# A trigger that refuses REFUSED's bytes: it fires after the document row is
# written and before the queue item, so a half-written upload would show. On SQLite
# the row is inserted with a zeroblob of the bytes' size (they are written after it,
# through the blob interface): refused by that size, which no other file here has.
_REFUSE_TRIGGER = {
    "sqlite": [
        "CREATE TRIGGER refuse_bytes BEFORE INSERT ON document_contents"
        f" WHEN length(NEW.data) = {len(REFUSED)}"
        " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION refuse_bytes() RETURNS trigger LANGUAGE plpgsql AS $$"
        f" BEGIN IF NEW.data = '\\x{REFUSED.hex()}'::bytea"
        " THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER refuse_bytes BEFORE INSERT ON document_contents"
        " FOR EACH ROW EXECUTE FUNCTION refuse_bytes()",
    ],
}


@pytest.fixture
def refuse_bytes(app: Flask) -> Iterator[None]:
    """The database refuses to store REFUSED (dropped again after the test)."""
    for sql in _REFUSE_TRIGGER[backend_name(app)]:
        execute_sql(app, sql)
    yield
    execute_sql(app, "DROP TRIGGER refuse_bytes" + _ON_TABLE[backend_name(app)])


_ON_TABLE = {"sqlite": "", "postgresql": " ON document_contents"}


def rows(app: Flask, sql: str, **params: Any) -> list[dict[str, Any]]:
    with app.app_context():
        result = db.session.execute(text(sql), params).mappings().all()
        db.session.rollback()
    return [dict(row) for row in result]


def count_rows(app: Flask, table: str) -> int:
    return rows(app, f"SELECT count(*) AS n FROM {table}")[0]["n"]


# -- one upload ---------------------------------------------------------------------


def test_an_accepted_upload_reads_nothing_before_writing(app: Flask, client: FlaskClient) -> None:
    upload(client, b"warm the connection pool")

    with statements_run(app) as run:
        response = upload(client, b"counted statements")
    statements = [" ".join(statement.split()) for statement, _ in run]

    assert response.status_code == 202
    assert not [s for s in statements if s.startswith("SELECT")], statements
    if backend_name(app) == "postgresql":
        # The document, its bytes and its item in one statement: one round trip.
        assert len(statements) == 1, statements
    else:
        inserts = [s.split()[2] for s in statements if s.startswith("INSERT")]
        assert inserts == ["documents", "document_contents", "queue_items"], statements


def test_an_upload_writes_its_document_bytes_and_item_as_the_api_shows_them(
    app: Flask, client: FlaskClient
) -> None:
    data = b"every column checked"
    answered = upload(client, data, "columns.txt", priority=7).get_json()

    # The answer is built from what was written, without reading it back: it must agree.
    read_back = client.get(f"/api/documents/{answered['id']}").get_json()
    assert read_back == {key: value for key, value in answered.items() if key != "duplicate"}
    [document] = rows(
        app,
        "SELECT status, error, title, text, metadata IS NULL AS no_metadata, processed_at"
        " FROM documents WHERE id = :id",
        id=answered["id"],
    )
    assert document == {
        "status": "pending",
        "error": None,
        "title": None,
        "text": None,
        "no_metadata": True,  # SQL NULL, not the JSON null
        "processed_at": None,
    }
    [content] = rows(
        app, "SELECT data FROM document_contents WHERE document_id = :id", id=answered["id"]
    )
    assert bytes(content["data"]) == data
    with app.app_context():
        stored = db.session.get(Document, answered["id"])
        item = db.session.scalar(db.select(QueueItem).where(QueueItem.document_id == stored.id))
        assert stored.created_at == stored.updated_at == item.run_at == item.created_at
        assert stored.created_at.tzinfo == UTC
        assert (item.operation, item.status, item.priority, item.attempts) == (
            "process",
            "pending",
            7,
            0,
        )
        assert (item.locked_by, item.lease_expires_at, item.started_at, item.finished_at) == (
            None,
        ) * 4
        assert item.max_attempts == app.config["MAX_ATTEMPTS"]
        assert answered["queue_item"]["id"] == item.id
        db.session.rollback()


def test_racing_uploads_of_the_same_bytes_make_one_document(app: Flask) -> None:
    racers = 6
    barrier = threading.Barrier(racers)
    answers: list[tuple[int, int]] = []

    def race() -> None:
        client = app.test_client()
        barrier.wait()
        response = upload(client, b"uploaded by everyone at once", "race.txt")
        answers.append((response.status_code, response.get_json()["id"]))

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(code for code, _ in answers) == [200] * (racers - 1) + [202]
    assert len({document_id for _, document_id in answers}) == 1
    assert count_rows(app, "documents") == count_rows(app, "queue_items") == 1


# -- many at once ---------------------------------------------------------------------


def test_submit_documents_stores_each_new_file_once_and_answers_in_order(
    app: Flask, app_ctx: Flask
) -> None:
    service = DocumentQueueService()
    earlier, _ = service.submit_document("earlier.txt", b"stored before", "text/plain")

    results = service.submit_documents(
        [
            NewDocument("a.txt", b"first new file", "text/plain", priority=9),
            NewDocument("again.txt", b"stored before", "text/plain"),
            NewDocument("b.md", b"# second new file", "text/markdown"),
            NewDocument("a-copy.txt", b"first new file", "text/plain"),
        ]
    )

    assert [created for _, created in results] == [True, False, True, False]
    first, again, second, copy = (document for document, _ in results)
    assert again.id == earlier.id and again.filename == "earlier.txt"
    assert copy.id == first.id and first.id < second.id
    assert (first.filename, first.content_type, first.status) == ("a.txt", "text/plain", "pending")
    assert (second.filename, second.size) == ("b.md", len(b"# second new file"))
    queued = db.session.execute(
        db.select(QueueItem.document_id, QueueItem.priority).order_by(QueueItem.id)
    ).all()
    assert queued == [(earlier.id, 5), (first.id, 9), (second.id, 5)]
    assert service.get_queue_stats()["pending"] == 3


def test_submit_documents_stores_every_byte_and_name_as_given(app: Flask, app_ctx: Flask) -> None:
    # PostgreSQL receives the files as arrays in the binary format: no value may be
    # changed by escaping or quoting on the way, whatever its bytes or characters.
    files = [
        NewDocument('{a, "b"}\\ NULL.bin', bytes(range(256)) * 2, "application/octet-stream"),
        NewDocument("NULL", b"\x00" * 5 + b"\\x00,{}", "text/plain", callback_url=None),
        NewDocument("ünïcødé 文書.txt", "ünïcødé 文書".encode(), "text/plain; charset=utf-8"),
    ]

    documents = [document for document, _ in DocumentQueueService().submit_documents(files)]

    stored = {
        row.document_id: row.data
        for row in db.session.execute(text("SELECT document_id, data FROM document_contents"))
    }
    for file, document in zip(files, documents, strict=True):
        assert (document.filename, document.content_type) == (file.filename, file.content_type)
        assert bytes(stored[document.id]) == file.content
        assert document.callback_url is None


def test_submit_documents_stores_all_files_or_none(
    app: Flask, app_ctx: Flask, refuse_bytes: None
) -> None:
    service = DocumentQueueService()
    files = [
        NewDocument("kept.txt", b"would be fine alone", "text/plain"),
        NewDocument("refused.txt", REFUSED, "text/plain"),
    ]

    with pytest.raises(DBAPIError, match="refused by the test"):
        service.submit_documents(files)

    for table in ("documents", "document_contents", "queue_items"):
        assert count_rows(app, table) == 0, table
    document, created = service.submit_document("kept.txt", b"would be fine alone", "text/plain")
    assert created and document.status == "pending"


def test_submit_documents_checks_every_priority_before_storing(app: Flask, app_ctx: Flask) -> None:
    with pytest.raises(ValueError, match="priority"):
        DocumentQueueService().submit_documents(
            [
                NewDocument("ok.txt", b"ok", "text/plain"),
                NewDocument("no.txt", b"no", "text/plain", 11),
            ]
        )

    assert count_rows(app, "documents") == 0


def test_submit_documents_of_nothing_stores_nothing(app_ctx: Flask) -> None:
    assert DocumentQueueService().submit_documents([]) == []


def test_the_web_form_stores_all_chosen_files_or_none(
    app: Flask, client: FlaskClient, refuse_bytes: None
) -> None:
    with pytest.raises(DBAPIError, match="refused by the test"):  # TESTING propagates it
        submit_form(client, [(b"a fine first file", "fine.txt"), (REFUSED, "refused.txt")])

    assert document_count(client) == 0


def test_the_web_form_stores_several_files_with_one_priority(client: FlaskClient) -> None:
    response = submit_form(client, [(b"one", "1.txt"), (b"two", "2.txt")], priority="8")

    assert response.headers["Location"] == "/documents"
    items = client.get("/api/documents").get_json()["items"]
    assert sorted(item["filename"] for item in items) == ["1.txt", "2.txt"]
    assert {item["queue_item"]["priority"] for item in items} == {8}
