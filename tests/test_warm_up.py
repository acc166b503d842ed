"""A server's worker warms up before it takes requests (gunicorn.conf.py's
``post_worker_init``), so its first uploads do not each open a database connection
nor wait for the first full garbage collection."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator

import pytest
from flask import Flask

from docqueue_app import create_app, warm_up
from tests.conftest import BASE_CONFIG
from tests.helpers import close_connections, connections_opened, upload


@pytest.fixture(autouse=True)
def unfreeze() -> Iterator[None]:
    """warm_up freezes what the process holds; this one is the test run, which goes on."""
    yield
    gc.unfreeze()


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


def test_later_collections_do_not_walk_what_the_start_made(app: Flask) -> None:
    """The first full collection of a fresh gunicorn worker walked the ~100,000 objects
    of its imports (31-33 ms, while the worker's other first requests waited); after
    warm_up they are collected once and frozen, out of every later collection's walk."""
    warm_up(app, threads=1)

    walked = {id(obj) for obj in gc.get_objects()}
    assert id(app) not in walked
    assert id(app.url_map) not in walked
    assert id(create_app) not in walked
