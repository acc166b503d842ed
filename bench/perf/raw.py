"""The database's own limits: minimal loops with no queue library in between.

- Drain: two processes claim B jobs at a time from a minimal table and complete them
  in one batched UPDATE (PostgreSQL: psycopg 3, ``UPDATE ... WHERE id IN (SELECT ...
  FOR UPDATE SKIP LOCKED LIMIT B) RETURNING``; SQLite: stdlib sqlite3, WAL,
  synchronous=FULL, ``BEGIN IMMEDIATE``, ``UPDATE ... RETURNING``).
- Enqueue: a document row, its bytes and its queue item inserted in one transaction
  each, into docqueue's own tables.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from contextlib import closing
from typing import Any

import psycopg

from .common import reference_rate
from .databases import Database

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
_NOW = {"postgresql": "now()", "sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now')"}


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
