"""A server's worker warms up before it takes requests (gunicorn.conf.py's
``post_worker_init``), so its first uploads do not each open a database connection."""

from __future__ import annotations

import logging

import pytest
from flask import Flask

from docqueue_app import create_app, warm_up
from tests.conftest import BASE_CONFIG
from tests.helpers import close_connections, connections_opened, upload


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
