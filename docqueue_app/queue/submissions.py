"""Storing new documents: an upload's (or an import's) rows in as few statements as possible.

A new document is three rows: the document, its bytes (``document_contents``)
and its first queue item, written in one transaction (SPEC §3). Bytes stored
before are not read first: the document insert skips them by the unique sha256
(``ON CONFLICT DO NOTHING``), so an upload asks the database nothing before it
writes, and two racing uploads of the same bytes cannot both create a document.

- PostgreSQL: one statement of data-modifying CTEs writes every row of any
  number of documents, the database clock included (``now()``, the start of
  the transaction, as everywhere else): an upload is one round trip.
- SQLite: three statements (it has no data-modifying CTEs); they cost no
  round trip there, and the clock is the host's, as ``database_now`` says.

``DocumentQueueService.submit_documents`` runs these inside its transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection

from ..models import (
    Document,
    QueueItem,
    raised_as_sqlalchemy_would,
    run_on_driver,
    stored_timestamp,
    unpooled_after_large_message,
    utcnow,
)
from ..states import DEFAULT_PRIORITY, DocumentStatus, ItemStatus, Operation

# A new document and its first item, as stored.
_DOCUMENT_PENDING = DocumentStatus.PENDING.value
_ITEM_PENDING = ItemStatus.PENDING.value
_PROCESS = Operation.PROCESS.value


@dataclass(frozen=True)
class NewDocument:
    """One file to store and queue, as an upload or an import hands it over."""

    filename: str
    content: bytes
    content_type: str
    priority: int = DEFAULT_PRIORITY
    callback_url: str | None = None  # checked already (webhooks.destinations)


@dataclass(frozen=True)
class Submission:
    """What became of one file: its document, whether it was created, and its item.

    ``item`` is the queue item made for a created document; for bytes that were
    stored before (nothing was queued for them), the document's latest item as
    read with it (None when it has none).
    """

    document: Document
    created: bool
    item: QueueItem | None = None


@dataclass(frozen=True)
class StoredDocument:
    """The keys and clock of a document just written, and of its first queue item."""

    document_id: int
    item_id: int
    created_at: datetime


# Plain SQL in psycopg's placeholders, run on its connection (run_on_driver): an
# upload is this one statement, and SQLAlchemy's path around it cost more CPU than
# the statement. ``incoming`` is the files, one row each, numbered in order.
_POSTGRESQL_STORE = """
    WITH incoming AS ({incoming}
    ), new_documents AS (
        INSERT INTO documents
            (filename, content_type, size, sha256, status, callback_url, created_at, updated_at)
        SELECT filename, content_type, size, sha256, %(document_status)s, callback_url, now(), now()
        FROM incoming
        ORDER BY position
        ON CONFLICT (sha256) DO NOTHING
        RETURNING id, sha256, created_at
    ), new_contents AS (
        INSERT INTO document_contents (document_id, data)
        SELECT new_documents.id, incoming.data
        FROM new_documents JOIN incoming USING (sha256)
    ), new_items AS (
        INSERT INTO queue_items
            (document_id, operation, status, priority, attempts, max_attempts, run_at, created_at)
        SELECT new_documents.id, %(operation)s, %(item_status)s, incoming.priority, 0,
            %(max_attempts)s, new_documents.created_at, new_documents.created_at
        FROM new_documents JOIN incoming USING (sha256)
        ORDER BY incoming.position
        RETURNING id, document_id
    )
    SELECT new_documents.sha256, new_documents.id AS document_id, new_items.id AS item_id,
        new_documents.created_at
    FROM new_documents JOIN new_items ON new_items.document_id = new_documents.id
"""
# Many files: each column an array, so the statement's text (and its server-side
# prepared plan) is the same for two documents and for a thousand. The arrays go in
# the binary format (``%b``): in text, psycopg escapes each document's bytes to hex
# and scans the escape with a regular expression for quoting, 5.4 million
# instructions for a 42 KB document (callgrind), more than all the rest of storing it.
_POSTGRESQL_STORE_MANY = _POSTGRESQL_STORE.format(
    incoming="""
        SELECT *
        FROM unnest(
            CAST(%(filename)b AS varchar[]), CAST(%(content_type)b AS varchar[]),
            CAST(%(size)b AS integer[]), CAST(%(sha256)b AS varchar[]),
            CAST(%(priority)b AS integer[]), CAST(%(data)b AS bytea[]),
            CAST(%(callback_url)b AS text[])
        ) WITH ORDINALITY
            AS incoming
                (filename, content_type, size, sha256, priority, data, callback_url, position)"""
)
# One file, an upload's: its values as they are. Dumping seven arrays of one took a
# fifth of an upload's CPU (py-spy).
_POSTGRESQL_STORE_ONE = _POSTGRESQL_STORE.format(
    incoming="""
        SELECT CAST(%(filename)s AS varchar) AS filename,
            CAST(%(content_type)s AS varchar) AS content_type, CAST(%(size)s AS integer) AS size,
            CAST(%(sha256)s AS varchar) AS sha256, CAST(%(priority)s AS integer) AS priority,
            CAST(%(data)s AS bytea) AS data, CAST(%(callback_url)s AS text) AS callback_url,
            1 AS position"""
)

# One row at a time on SQLite: each statement is a call into the library, not a
# round trip, and run straight on the sqlite3 connection (run_on_driver): SQLAlchemy's
# compiling and execution path cost more than the inserts themselves.
_SQLITE_DOCUMENT = (
    "INSERT INTO documents"
    " (filename, content_type, size, sha256, status, callback_url, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING RETURNING id"
)
# The bytes are written after the row, through SQLite's blob interface (_write_blob):
# bound to the insert, SQLite copied them once to bind and once more to build the
# row, two copies of a 50 MB upload at the worker's peak beside ours.
_SQLITE_CONTENT = (
    "INSERT INTO document_contents (document_id, data) VALUES (?, zeroblob(?)) RETURNING rowid"
)
# Bytes written to a blob at a time: SQLite's page cache takes them, not a copy of the whole.
_BLOB_CHUNK_BYTES = 1024 * 1024
_SQLITE_ITEM = (
    "INSERT INTO queue_items"
    " (document_id, operation, status, priority, attempts, max_attempts, run_at, created_at)"
    " VALUES (?, ?, ?, ?, 0, ?, ?, ?) RETURNING id"
)


def store_new_documents(
    connection: Connection, files: Mapping[str, NewDocument], max_attempts: int
) -> dict[str, StoredDocument]:
    """Write each file (keyed by its sha256) whose bytes are not stored yet.

    Returns what was written, by sha256; a file missing from the answer was
    stored before (or by a racing upload). Runs in the caller's transaction.
    """
    if not files:
        return {}
    if connection.dialect.name == "postgresql":
        return _store_on_postgresql(connection, files, max_attempts)
    return _store_on_sqlite(connection, files, max_attempts)


def _store_on_postgresql(
    connection: Connection, files: Mapping[str, NewDocument], max_attempts: int
) -> dict[str, StoredDocument]:
    unpooled_after_large_message(connection, sum(len(f.content) for f in files.values()))
    values = [_incoming_row(digest, file) for digest, file in files.items()]
    if len(values) == 1:
        statement, incoming = _POSTGRESQL_STORE_ONE, _sent_unchanged(connection, values[0])
    else:
        statement = _POSTGRESQL_STORE_MANY
        incoming = {name: [row[name] for row in values] for name in values[0]}
    rows = run_on_driver(
        connection,
        statement,
        {
            **incoming,
            "document_status": _DOCUMENT_PENDING,
            "item_status": _ITEM_PENDING,
            "operation": _PROCESS,
            "max_attempts": max_attempts,
        },
    )
    return {
        sha256: StoredDocument(document_id, item_id, created_at.astimezone(UTC))
        for sha256, document_id, item_id, created_at in rows
    }


def _sent_unchanged(connection: Connection, row: dict[str, object]) -> dict[str, object]:
    """One upload's row with its bytes handed to libpq uncopied (a 50 MB upload held
    three copies at its peak, two now: ours and the message libpq sends)."""
    # Imported here: it imports psycopg, which a server on SQLite never needs.
    from .unchanged_bytes import UnchangedBytes, send_bytes_unchanged

    send_bytes_unchanged(connection.connection.dbapi_connection)
    return {**row, "data": UnchangedBytes(row["data"])}


def _incoming_row(digest: str, file: NewDocument) -> dict[str, object]:
    """One file's row of ``incoming``, by column (PostgreSQL)."""
    return {
        "filename": file.filename,
        "content_type": file.content_type,
        "size": len(file.content),
        "sha256": digest,
        "priority": file.priority,
        "data": file.content,
        "callback_url": file.callback_url,
    }


def _store_on_sqlite(
    connection: Connection, files: Mapping[str, NewDocument], max_attempts: int
) -> dict[str, StoredDocument]:
    now = utcnow()
    stamp = stored_timestamp(connection, now)
    stored = {}
    for digest, file in files.items():
        size = len(file.content)
        inserted = run_on_driver(
            connection,
            _SQLITE_DOCUMENT,
            (
                file.filename,
                file.content_type,
                size,
                digest,
                _DOCUMENT_PENDING,
                file.callback_url,
                stamp,
                stamp,
            ),
        ).fetchall()
        if not inserted:
            continue  # stored before
        [(document_id,)] = inserted
        [(content_row,)] = run_on_driver(
            connection, _SQLITE_CONTENT, (document_id, size)
        ).fetchall()
        _write_blob(connection, "document_contents", "data", content_row, file.content)
        [(item_id,)] = run_on_driver(
            connection,
            _SQLITE_ITEM,
            (document_id, _PROCESS, _ITEM_PENDING, file.priority, max_attempts, stamp, stamp),
        ).fetchall()
        stored[digest] = StoredDocument(document_id, item_id, now)
    return stored


def _write_blob(connection: Connection, table: str, column: str, row: int, content: bytes) -> None:
    """Write ``content`` into the blob of that size (a ``zeroblob``) at ``row`` (SQLite),
    a chunk at a time, in the caller's transaction. Errors (a full disk) are raised as
    SQLAlchemy would have raised them, as run_on_driver's are."""
    view = memoryview(content)
    with (
        raised_as_sqlalchemy_would(connection, f"blob write {table}.{column}", ()),
        connection.connection.dbapi_connection.blobopen(table, column, row) as blob,
    ):
        for start in range(0, len(view), _BLOB_CHUNK_BYTES):
            blob.write(view[start : start + _BLOB_CHUNK_BYTES])
