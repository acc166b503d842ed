"""The database's own limits: minimal loops with no queue library in between.

- Drain: two processes claim B jobs at a time from a minimal table and complete them
  in one batched UPDATE (PostgreSQL: psycopg 3, ``UPDATE ... WHERE id IN (SELECT ...
  FOR UPDATE SKIP LOCKED LIMIT B) RETURNING``; SQLite: stdlib sqlite3, WAL,
  synchronous=FULL, ``BEGIN IMMEDIATE``, ``UPDATE ... RETURNING``).
- Drain writing docqueue's rows: the same two processes, but over docqueue's own tables
  filled as for docqueue's drain, each batch written as docqueue writes it (SPEC §3):
  the claim makes the items in progress, opens their attempts and shows their documents
  processing, and reads the documents' bytes, in one transaction; the completion makes
  the items completed, closes their attempts and writes the documents' results and
  status, in another. None of docqueue's reads for correctness (a busy document, the
  queue's pause, a document's latest item, the fencing of a completion) and no Python
  between: what this schema's writes cost, the ceiling of docqueue's drain on it.
- Enqueue: a document row, its bytes and its queue item inserted in one transaction
  each, into docqueue's own tables.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from contextlib import closing
from datetime import timedelta
from typing import Any

import psycopg

from .common import reference_rate
from .databases import Database, Probe, fill_queue

_TABLE = "CREATE TABLE raw_jobs (id integer PRIMARY KEY, status text NOT NULL, payload text)"
_INDEX = "CREATE INDEX raw_jobs_pending ON raw_jobs (id) WHERE status = 'pending'"
_DONE = "SELECT count(*) FROM raw_jobs WHERE status = 'done'"
_CLAIM = (
    "UPDATE raw_jobs SET status = 'running' WHERE id IN (SELECT id FROM raw_jobs"
    " WHERE status = 'pending' ORDER BY id{lock} LIMIT {batch}) RETURNING id"
)
_FILL = {
    "postgresql": "INSERT INTO raw_jobs SELECT n, 'pending', '{}' FROM generate_series(1, %d) n",
    "sqlite": "INSERT INTO raw_jobs WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1"
    " FROM s WHERE n < %d) SELECT n, 'pending', '{}' FROM s",
}


def _sqlite(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, timeout=30)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    return connection


def drain_postgresql(url: str, batch: int) -> None:
    claim = _CLAIM.format(lock=" FOR UPDATE SKIP LOCKED", batch=batch)
    with psycopg.connect(url, autocommit=True) as connection:
        while ids := [row[0] for row in connection.execute(claim)]:
            connection.execute("UPDATE raw_jobs SET status = 'done' WHERE id = ANY(%s)", [ids])


def drain_sqlite(path: str, batch: int) -> None:
    claim = _CLAIM.format(lock="", batch=batch)
    connection = _sqlite(path)
    while True:
        connection.execute("BEGIN IMMEDIATE")
        ids = [row[0] for row in connection.execute(claim)]
        connection.execute("COMMIT")
        if not ids:
            break
        marks = ",".join("?" * len(ids))
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(f"UPDATE raw_jobs SET status = 'done' WHERE id IN ({marks})", ids)
        connection.execute("COMMIT")
    connection.close()


# The writes of docqueue's claim and completion. SQLite: statements in one
# transaction each (no data-modifying CTEs; its round trips are function calls).
# PostgreSQL: one statement each, as docqueue sends them, so that the loop pays
# one round trip per transaction.
_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
_SQLITE_CLAIM = (
    "UPDATE queue_items SET status = 'in_progress', locked_by = ?,"
    " lease_expires_at = strftime('%Y-%m-%d %H:%M:%f', 'now', '+60 seconds'),"
    f" attempts = attempts + 1, started_at = {_SQLITE_NOW}, finished_at = NULL"
    " WHERE id IN (SELECT id FROM queue_items WHERE status = 'pending'"
    f" AND run_at <= {_SQLITE_NOW} ORDER BY priority DESC, run_at, id LIMIT {{batch}})"
    " RETURNING id"
)
_SQLITE_FOLLOW_CLAIM = (
    "INSERT INTO queue_attempts (queue_item_id, attempt, worker, started_at)"
    " SELECT id, attempts, locked_by, started_at FROM queue_items WHERE id IN ({ids})",
    f"UPDATE documents SET status = 'processing', error = NULL, updated_at = {_SQLITE_NOW}"
    " FROM queue_items AS q WHERE q.id IN ({ids}) AND documents.id = q.document_id",
    "SELECT c.data FROM queue_items AS q JOIN document_contents AS c"
    " ON c.document_id = q.document_id WHERE q.id IN ({ids})",
)
_SQLITE_COMPLETE = (
    "UPDATE queue_items SET status = 'completed', locked_by = NULL, lease_expires_at = NULL,"
    f" last_error = NULL, finished_at = {_SQLITE_NOW} WHERE id IN ({{ids}})",
    f"UPDATE queue_attempts SET finished_at = {_SQLITE_NOW}, outcome = 'completed', error = NULL"
    " FROM queue_items AS q WHERE q.id IN ({ids}) AND queue_attempts.queue_item_id = q.id"
    " AND queue_attempts.attempt = q.attempts",
    "UPDATE documents SET text = '', title = NULL, page_count = NULL, metadata = '{{}}',"
    f" word_count = 0, char_count = 0, processed_at = {_SQLITE_NOW}, status = 'completed',"
    f" error = NULL, updated_at = {_SQLITE_NOW}"
    " FROM queue_items AS q WHERE q.id IN ({ids}) AND documents.id = q.document_id",
)
_POSTGRESQL_CLAIM = """
WITH claimed AS (
  UPDATE queue_items SET status = 'in_progress', locked_by = %s,
    lease_expires_at = now() + interval '60 seconds', attempts = attempts + 1,
    started_at = now(), finished_at = NULL
  WHERE id IN (SELECT id FROM queue_items WHERE status = 'pending' AND run_at <= now()
    ORDER BY priority DESC, run_at, id FOR UPDATE SKIP LOCKED LIMIT {batch})
  RETURNING id, document_id, attempts, locked_by, started_at
), opened AS (
  INSERT INTO queue_attempts (queue_item_id, attempt, worker, started_at)
  SELECT id, attempts, locked_by, started_at FROM claimed
), shown AS (
  UPDATE documents SET status = 'processing', error = NULL, updated_at = now()
  FROM claimed WHERE documents.id = claimed.document_id
)
SELECT claimed.id, c.data FROM claimed
JOIN document_contents AS c ON c.document_id = claimed.document_id"""
_POSTGRESQL_COMPLETE = """
WITH completed AS (
  UPDATE queue_items SET status = 'completed', locked_by = NULL, lease_expires_at = NULL,
    last_error = NULL, finished_at = now()
  WHERE id = ANY(%s) RETURNING id, document_id, attempts
), closed AS (
  UPDATE queue_attempts SET finished_at = now(), outcome = 'completed', error = NULL
  FROM completed WHERE queue_attempts.queue_item_id = completed.id
    AND queue_attempts.attempt = completed.attempts
)
UPDATE documents SET text = '', title = NULL, page_count = NULL, metadata = '{}',
  word_count = 0, char_count = 0, processed_at = now(), status = 'completed',
  error = NULL, updated_at = now()
FROM completed WHERE documents.id = completed.document_id"""


def _drain_postgresql_with_docqueue_writes(url: str, batch: int) -> None:
    claim = _POSTGRESQL_CLAIM.format(batch=batch)
    with psycopg.connect(url, autocommit=True) as connection:
        while ids := [row[0] for row in connection.execute(claim, [f"raw-{os.getpid()}"])]:
            connection.execute(_POSTGRESQL_COMPLETE, [ids])


def _drain_sqlite_with_docqueue_writes(path: str, batch: int) -> None:
    claim = _SQLITE_CLAIM.format(batch=batch)
    with closing(_sqlite(path)) as connection:
        while True:
            connection.execute("BEGIN IMMEDIATE")
            ids = ",".join(str(row[0]) for row in connection.execute(claim, [f"raw-{os.getpid()}"]))
            for statement in _SQLITE_FOLLOW_CLAIM if ids else ():
                connection.execute(statement.format(ids=ids)).fetchall()
            connection.execute("COMMIT")
            if not ids:
                return
            connection.execute("BEGIN IMMEDIATE")
            for statement in _SQLITE_COMPLETE:
                connection.execute(statement.format(ids=ids))
            connection.execute("COMMIT")


def drain_with_docqueue_writes(kind: str, where: str, batch: int) -> None:
    """One process of the loop writing docqueue's rows (see the module's docstring)."""
    if kind == "postgresql":
        _drain_postgresql_with_docqueue_writes(where, batch)
    else:
        _drain_sqlite_with_docqueue_writes(where, batch)


def drain_docqueue_writes(database: Database, jobs: int, batch: int, workers: int = 2) -> float:
    """Jobs per second of ``workers`` processes writing docqueue's rows, in steady state."""
    fill_queue(database, 1, jobs, due_in=timedelta(seconds=-1))
    where = database.url if database.kind == "postgresql" else database.sqlite_path
    probe = Probe(database)
    try:
        return reference_rate(
            "raw-docqueue-writes", (database.kind, where, batch), workers, probe.finished, jobs
        )
    finally:
        probe.close()


def drain(database: Database, jobs: int, batch: int, workers: int = 2) -> float:
    """Jobs per second of ``workers`` raw claim-and-complete processes, in steady state."""
    with closing(database.connect()) as connection:
        connection.execute(_TABLE)
        connection.execute(_INDEX)
        connection.execute(_FILL[database.kind] % jobs)
    where = database.url if database.kind == "postgresql" else database.sqlite_path
    with closing(database.connect()) as probe:
        return reference_rate(
            f"raw-{database.kind}",
            (where, batch),
            workers,
            lambda: probe.execute(_DONE).fetchone()[0],
            jobs,
        )


_INSERTS = (
    "INSERT INTO documents (filename, content_type, size, sha256, status, created_at,"
    " updated_at) VALUES ({p}, 'text/plain', {p}, {p}, 'pending', {now}, {now}) RETURNING id",
    "INSERT INTO document_contents (document_id, data) VALUES ({p}, {p})",
    "INSERT INTO queue_items (document_id, operation, status, priority, attempts,"
    " max_attempts, run_at, created_at) VALUES ({p}, 'process', 'pending', 5, 0, 5, {now}, {now})",
)


_PLACEHOLDER = {"postgresql": "%s", "sqlite": "?"}
_NOW = {"postgresql": "now()", "sqlite": _SQLITE_NOW}


def enqueue(database: Database, contents: list[bytes]) -> float:
    """Uploads per second of a raw loop: the same three rows, one transaction each."""
    document, content, item = (
        sql.format(p=_PLACEHOLDER[database.kind], now=_NOW[database.kind]) for sql in _INSERTS
    )
    connection: Any = (
        _sqlite(database.sqlite_path) if database.kind == "sqlite" else database.connect()
    )
    begin = "BEGIN IMMEDIATE" if database.kind == "sqlite" else "BEGIN"
    started = time.perf_counter()
    for number, data in enumerate(contents):
        digest = hashlib.sha256(data).hexdigest()
        connection.execute(begin)
        document_id = connection.execute(
            document, (f"raw-{number}.txt", len(data), digest)
        ).fetchone()[0]
        connection.execute(content, (document_id, data))
        connection.execute(item, (document_id,))
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return len(contents) / elapsed
