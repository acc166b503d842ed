"""The bare reference for HTTP uploads: a Flask endpoint that stores the bytes with one INSERT.

Served like docqueue: ``gunicorn -c bench/perf/bare_gunicorn.conf.py
bench.perf.bare_upload:app`` with DATABASE_URL set. ``POST /api/documents``
(multipart, field ``file``) answers 202 as docqueue does.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any

import psycopg
from flask import Flask, jsonify, request

TABLE = {
    "postgresql": "CREATE TABLE bare_uploads (id serial PRIMARY KEY, filename text, data bytea)",
    "sqlite": "CREATE TABLE bare_uploads (id integer PRIMARY KEY, filename text, data blob)",
}
INSERT = {
    "postgresql": "INSERT INTO bare_uploads (filename, data) VALUES (%s, %s) RETURNING id",
    "sqlite": "INSERT INTO bare_uploads (filename, data) VALUES (?, ?) RETURNING id",
}

app = Flask(__name__)
_connections = threading.local()


def _kind() -> str:
    return "sqlite" if os.environ["DATABASE_URL"].startswith("sqlite") else "postgresql"


def _connection() -> Any:
    """One connection per server thread, autocommit: each INSERT is its own transaction."""
    connection = getattr(_connections, "connection", None)
    if connection is None:
        url = os.environ["DATABASE_URL"]
        if _kind() == "postgresql":
            connection = psycopg.connect(url, autocommit=True)
        else:
            connection = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA busy_timeout=30000")
        _connections.connection = connection
    return connection


@app.post("/api/documents")
def upload() -> tuple[Any, int]:
    upload = request.files["file"]
    data = upload.read()
    row = _connection().execute(INSERT[_kind()], (upload.filename, data)).fetchone()
    return jsonify({"id": row[0], "status": "pending", "size": len(data)}), 202


@app.get("/healthz")
def health() -> dict[str, str]:
    return {"status": "ok"}
