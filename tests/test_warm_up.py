"""A server's worker warms up before it takes requests (gunicorn.conf.py's
``post_worker_init``), so its first uploads do not each open a database connection."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event

from docqueue_app import create_app, warm_up
from docqueue_app.models import db
from tests.conftest import BASE_CONFIG
from tests.helpers import close_connections, upload


@contextmanager
def connections_opened(app: Flask) -> Iterator[list[Any]]:
    """Each new database connection the app opens while in the block."""
    opened: list[Any] = []

    def count(dbapi_connection: Any, _record: Any) -> None:
        opened.append(dbapi_connection)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "connect", count)
    try:
        yield opened
    finally:
        event.remove(engine, "connect", count)


def test_uploads_after_warm_up_open_no_connection(app: Flask) -> None:
    close_connections(app)
    warm_up(app, threads=2)
    client = app.test_client()

    with connections_opened(app) as opened:
        assert upload(client, b"first upload after a start").status_code == 202
        assert upload(client, b"second upload after a start").status_code == 202

    assert opened == []
    close_connections(app)


def test_a_server_warms_up_while_its_database_is_down_and_serves_once_it_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app({**BASE_CONFIG, "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nope"})
    with caplog.at_level(logging.WARNING):
        warm_up(app, threads=2)  # does not raise: requests answer 503 until it is back

    assert "could not open connections at start" in caplog.text
    assert upload(app.test_client(), b"during the outage").status_code == 503
