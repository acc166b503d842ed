"""Requests racing each other and a worker, over HTTP: what each client is told.

Each client is a test client of its own in a thread of its own (its own app
context and session), all started from one barrier, many rounds, both back ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from werkzeug.http import http_date
from werkzeug.test import TestResponse

from docqueue_app.queue import DocumentQueueService
from tests.api import assert_json_error, run_queue
from tests.api.test_admin import admin_client
from tests.helpers import execute_sql, upload

ROUNDS = 10
WAIT = 30  # seconds: only a broken test waits that long


def at_once(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls at the same moment, each in its own thread; their answers in order."""
    barrier = threading.Barrier(len(calls))
    answers: list[Any] = [None] * len(calls)

    def run(n: int) -> None:
        barrier.wait(WAIT)
        try:
            answers[n] = calls[n]()
        except BaseException as exc:  # raised in the test's thread below
            answers[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive(), "a request never finished"
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    return answers


def uploading(app: Flask, content: bytes, name: str = "note.txt") -> Callable[[], TestResponse]:
    return lambda: upload(app.test_client(), content, name)


@pytest.fixture
def admin_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(ADMIN_PASSWORD="s3cret")


def test_the_same_bytes_uploaded_at_once_are_one_202_and_duplicates(app):
    client = app.test_client()
    for n in range(ROUNDS):
        content = f"uploaded four times at once {n}".encode()
        responses = at_once(*[uploading(app, content)] * 4)
        assert sorted(r.status_code for r in responses) == [200, 200, 200, 202]
        bodies = [r.get_json() for r in responses]
        assert len({body["id"] for body in bodies}) == 1
        assert sorted(body["duplicate"] for body in bodies) == [False, True, True, True]
        shown = client.get(f"/api/documents/{bodies[0]['id']}").get_json()
        assert shown["queue_item"]["status"] == "pending"


def test_a_delete_racing_an_upload_of_the_same_bytes(app):
    """The delete is 204; the upload is a 200 duplicate of the document it deleted, or
    a 202 of a new document that is there, queued, with its bytes."""
    client = app.test_client()
    for n in range(ROUNDS):
        content = f"deleted while uploaded again {n}".encode()
        old = upload(client, content).get_json()["id"]
        deleted, uploaded = at_once(
            lambda d=old: app.test_client().delete(f"/api/documents/{d}"),
            uploading(app, content, "again.txt"),
        )
        assert deleted.status_code == 204
        assert client.get(f"/api/documents/{old}").status_code == 404
        body = uploaded.get_json()
        if uploaded.status_code == 200:
            assert (body["id"], body["duplicate"]) == (old, True)
            continue
        assert uploaded.status_code == 202, body
        assert client.get(f"/api/documents/{body['id']}").get_json()["status"] == "pending"
        assert client.get(f"/api/documents/{body['id']}/file").data == content


def test_a_cancel_racing_a_workers_pass_is_told_what_happened(admin_app):
    """200 and the document ends cancelled (the pass's result dropped), or 409 and it
    ends completed: never both, never a 500."""
    admin = admin_client(admin_app)
    for n in range(ROUNDS):
        document = upload(admin, f"cancelled while processed {n}".encode()).get_json()
        item = document["queue_item"]["id"]
        cancelled, _ = at_once(
            lambda i=item: admin_client(admin_app).post(f"/api/queue/items/{i}/cancel"),
            lambda: run_queue(admin_app),
        )
        run_queue(admin_app)  # had the cancel come first, nothing is left; else finish
        status = admin.get(f"/api/documents/{document['id']}").get_json()["status"]
        if cancelled.status_code == 409:
            assert status == "completed"
        else:
            assert cancelled.status_code == 200, cancelled.get_json()
            assert (cancelled.get_json()["status"], status) == ("cancelled", "cancelled")


CONDITIONAL_CHANGES = {
    "delete": (
        "delete_document",
        lambda client, d, headers: client.delete(f"/api/documents/{d}", headers=headers),
    ),
    "reprocess": (
        "enqueue_and_show",
        lambda client, d, headers: client.post(f"/api/documents/{d}/reprocess", headers=headers),
    ),
}


@pytest.mark.parametrize("change", sorted(CONDITIONAL_CHANGES))
def test_a_conditional_change_is_refused_when_a_worker_changed_the_document_meanwhile(
    app, monkeypatch, change
):
    """If-Unmodified-Since is judged with the change, not before it: a worker that
    completes the document between the two makes the request a 412, nothing changed.

    The precondition was read in a transaction of its own, so the document was deleted
    (or queued again) though it had changed after the time the client named.
    """
    method, send = CONDITIONAL_CHANGES[change]
    client = app.test_client()
    document_id = upload(client, b"changed while a client decides").get_json()["id"]
    with app.app_context():
        [item] = DocumentQueueService().claim_due_items(1, "worker")
    an_hour_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    execute_sql(
        app, "UPDATE documents SET updated_at = :t WHERE id = :d", t=an_hour_ago, d=document_id
    )
    reached, go = threading.Event(), threading.Event()
    original = getattr(DocumentQueueService, method)

    def held(self: DocumentQueueService, *args: Any, **kwargs: Any) -> Any:
        reached.set()
        go.wait(WAIT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DocumentQueueService, method, held)
    headers = {"If-Unmodified-Since": http_date(an_hour_ago)}
    answers: list[TestResponse] = []
    request = threading.Thread(
        target=lambda: answers.append(send(app.test_client(), document_id, headers))
    )
    request.start()
    assert reached.wait(WAIT)
    with app.app_context():
        assert DocumentQueueService().mark_completed(item, {"text": "done"})
    go.set()
    request.join(WAIT)
    [response] = answers
    assert_json_error(response, 412, "Precondition Failed")
    shown = client.get(f"/api/documents/{document_id}").get_json()
    assert (shown["status"], shown["queue_item"]["id"]) == ("completed", item.id)
