"""Reading, reprocessing and deleting documents through /api/documents*."""

from __future__ import annotations

import threading
import time

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session

from docqueue_app.models import QueueItem
from docqueue_app.queue import DocumentQueueService
from tests.api import assert_json_error, run_queue
from tests.helpers import backend_name, statements_with_binary_rows, upload


def upload_ids(client: FlaskClient, count: int, first: int = 0) -> list[int]:
    return [
        upload(client, f"document number {n}".encode(), f"doc{n}.txt").get_json()["id"]
        for n in range(first, first + count)
    ]


# -- list -------------------------------------------------------------------------


def test_list_is_newest_first_in_an_envelope(client: FlaskClient) -> None:
    ids = upload_ids(client, 3)

    body = client.get("/api/documents").get_json()

    assert body["page"] == 1
    assert body["per_page"] == 20
    assert body["total"] == 3
    assert [item["id"] for item in body["items"]] == ids[::-1]
    assert body["items"][0]["queue_item"]["status"] == "pending"


def test_list_pages(client: FlaskClient) -> None:
    ids = upload_ids(client, 5)

    body = client.get("/api/documents?page=2&per_page=2").get_json()

    assert [item["id"] for item in body["items"]] == [ids[2], ids[1]]
    assert (body["page"], body["per_page"], body["total"]) == (2, 2, 5)
    assert client.get("/api/documents?page=9&per_page=2").get_json()["items"] == []


def test_list_filters_by_status(app: Flask, client: FlaskClient) -> None:
    done = upload_ids(client, 1)
    run_queue(app)
    waiting = upload_ids(client, 1, first=1)

    completed = client.get("/api/documents?status=completed").get_json()
    pending = client.get("/api/documents?status=pending").get_json()

    assert [item["id"] for item in completed["items"]] == done
    assert [item["id"] for item in pending["items"]] == waiting
    assert client.get("/api/documents?status=failed").get_json()["total"] == 0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("per_page=101", "per_page"),
        ("per_page=0", "per_page"),
        ("page=0", "page"),
        ("page=two", "page"),
        ("status=done", "status"),
    ],
)
def test_bad_list_parameters_are_422(client: FlaskClient, query: str, field: str) -> None:
    body = assert_json_error(client.get(f"/api/documents?{query}"), 422, "Unprocessable Entity")

    assert list(body["errors"]["query"]) == [field]


# -- one document -----------------------------------------------------------------


def test_document_has_every_field(client: FlaskClient) -> None:
    [document_id] = upload_ids(client, 1)

    document = client.get(f"/api/documents/{document_id}").get_json()

    assert set(document) == {
        "id", "filename", "content_type", "size", "sha256", "status", "error", "title",
        "page_count", "word_count", "char_count", "created_at", "updated_at",
        "processed_at", "metadata", "callback_url", "queue_item",
    }  # fmt: skip
    assert set(document["queue_item"]) == {
        "id", "operation", "status", "priority", "attempts", "max_attempts", "run_at",
        "last_error",
    }  # fmt: skip


def test_unknown_document_is_404(client: FlaskClient) -> None:
    for path in ("", "/text", "/file"):
        assert_json_error(client.get(f"/api/documents/999{path}"), 404, "Not Found")


def test_text_is_409_until_extracted_then_plain_text(app: Flask, client: FlaskClient) -> None:
    [document_id] = upload_ids(client, 1)

    waiting = client.get(f"/api/documents/{document_id}/text")
    run_queue(app)
    extracted = client.get(f"/api/documents/{document_id}/text")

    body = assert_json_error(waiting, 409, "Conflict")
    assert "pending" in body["message"]
    assert extracted.status_code == 200
    assert extracted.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert extracted.headers["X-Content-Type-Options"] == "nosniff"
    assert extracted.text.strip() == "document number 0"


def test_file_is_the_original_bytes_as_an_attachment(client: FlaskClient) -> None:
    data = "# Отчёт\n\nBytes kept exactly.\n".encode()
    document_id = upload(client, data, "отчёт.md").get_json()["id"]

    response = client.get(f"/api/documents/{document_id}/file")

    assert response.status_code == 200
    assert response.data == data
    assert response.headers["Content-Type"] == "text/markdown"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''%D0%BE%D1%82%D1%87%D1%91%D1%82.md" in disposition
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"] == "sandbox"


def test_a_download_hands_back_every_byte_value_as_stored(app: Flask, client: FlaskClient) -> None:
    data = bytes(range(256)) * 64 + b"\x00\\x00\r\n"
    with app.app_context():
        document, _ = DocumentQueueService().submit_document("bytes.bin", data, "image/png")
        document_id = document.id

    with statements_with_binary_rows(app) as binary:
        response = client.get(f"/api/documents/{document_id}/file")

    assert response.status_code == 200
    assert response.data == data
    # In text, PostgreSQL sends bytea as hex: twice the bytes, which the server
    # writes and the web server decodes at 24 instructions a byte.
    reads = [statement for statement in binary if "document_contents" in statement]
    assert len(reads) == (1 if backend_name(app) == "postgresql" else 0)


# -- reprocess --------------------------------------------------------------------


def test_reprocess_queues_again_and_keeps_the_text_meanwhile(
    app: Flask, client: FlaskClient
) -> None:
    [document_id] = upload_ids(client, 1)
    run_queue(app)

    response = client.post(f"/api/documents/{document_id}/reprocess", json={"priority": 8})

    assert response.status_code == 202
    document = response.get_json()
    assert document["status"] == "pending"
    assert document["queue_item"]["operation"] == "reprocess"
    assert document["queue_item"]["priority"] == 8
    assert client.get(f"/api/documents/{document_id}/text").status_code == 200
    assert run_queue(app)["completed"] == 1
    again = client.get(f"/api/documents/{document_id}").get_json()
    assert again["status"] == "completed"
    assert again["word_count"] == 3


def test_reprocess_answers_pending_even_when_a_worker_finishes_before_the_answer(
    app: Flask, client: FlaskClient
) -> None:
    # SPEC §4: the answer is the document with status "pending", as the request
    # queued it. A worker woken by the commit (PostgreSQL's NOTIFY wakes it in a
    # millisecond or two) may finish a small document before the answer is written.
    # Here a worker polls in another thread, and the request's first read after the
    # commit that queued the item waits until the worker has finished it.
    [document_id] = upload_ids(client, 1)
    run_queue(app)
    request_thread = threading.current_thread()
    queued, finished = threading.Event(), threading.Event()

    def work() -> None:
        deadline = time.monotonic() + 30
        while not finished.is_set() and time.monotonic() < deadline:
            if run_queue(app)["completed"]:
                finished.set()
            time.sleep(0.005)

    def note_the_queued_item(session: Session) -> None:
        if any(
            isinstance(row, QueueItem) and row.status == "pending"
            for row in session.identity_map.values()
        ):
            queued.set()

    def let_the_worker_finish_first(execution: ORMExecuteState) -> None:
        if threading.current_thread() is request_thread and queued.is_set():
            finished.wait(timeout=30)

    worker = threading.Thread(target=work)
    listeners = [
        (Session, "before_commit", note_the_queued_item),
        (Session, "do_orm_execute", let_the_worker_finish_first),
    ]
    for listener in listeners:
        event.listen(*listener)
    worker.start()
    try:
        response = client.post(f"/api/documents/{document_id}/reprocess")
    finally:
        for listener in listeners:
            event.remove(*listener)
        finished.wait(timeout=30)
        worker.join()

    assert finished.is_set()  # the worker did finish the reprocessing
    assert response.status_code == 202
    document = response.get_json()
    assert (document["status"], document["queue_item"]["status"]) == ("pending", "pending")
    assert document["queue_item"]["operation"] == "reprocess"
    latest = client.get(f"/api/documents/{document_id}").get_json()
    assert (latest["status"], latest["queue_item"]["id"]) == (
        "completed",
        document["queue_item"]["id"],
    )


def test_reprocess_without_a_body_uses_priority_5(client: FlaskClient) -> None:
    [document_id] = upload_ids(client, 1)

    response = client.post(f"/api/documents/{document_id}/reprocess")

    assert response.status_code == 202
    assert response.get_json()["queue_item"]["priority"] == 5


def test_reprocess_reads_json_sent_without_its_content_type(client: FlaskClient) -> None:
    # What `curl -d '{"priority": 9}'` sends.
    [document_id] = upload_ids(client, 1)

    response = client.post(
        f"/api/documents/{document_id}/reprocess",
        data='{"priority": 9}',
        content_type="application/x-www-form-urlencoded",
    )

    assert response.get_json()["queue_item"]["priority"] == 9


@pytest.mark.parametrize("priority", [11, -1, "high", 2.5, True, None])
def test_reprocess_with_a_bad_priority_is_422(client: FlaskClient, priority: object) -> None:
    [document_id] = upload_ids(client, 1)

    response = client.post(f"/api/documents/{document_id}/reprocess", json={"priority": priority})

    body = assert_json_error(response, 422, "Unprocessable Entity")
    assert list(body["errors"]["json"]) == ["priority"]


def test_reprocess_of_an_unknown_document_is_404(client: FlaskClient) -> None:
    assert_json_error(client.post("/api/documents/999/reprocess"), 404, "Not Found")


# -- delete -----------------------------------------------------------------------


def test_delete_removes_the_document_and_its_bytes(client: FlaskClient) -> None:
    [document_id] = upload_ids(client, 1)

    response = client.delete(f"/api/documents/{document_id}")

    assert response.status_code == 204
    assert response.data == b""
    assert_json_error(client.get(f"/api/documents/{document_id}"), 404, "Not Found")
    assert_json_error(client.get(f"/api/documents/{document_id}/file"), 404, "Not Found")
    assert client.get("/api/queue/stats").get_json()["total"] == 0
    assert_json_error(client.delete(f"/api/documents/{document_id}"), 404, "Not Found")


def test_a_deleted_documents_id_is_never_given_to_another(client: FlaskClient) -> None:
    # A client that kept the id (a link, a webhook it stored) must get 404, not a stranger.
    [document_id] = upload_ids(client, 1)
    client.delete(f"/api/documents/{document_id}")

    [next_id] = upload_ids(client, 1, first=1)

    assert next_id > document_id
    assert_json_error(client.get(f"/api/documents/{document_id}"), 404, "Not Found")


# -- API token --------------------------------------------------------------------

TOKEN = "s3cret-tøken"


@pytest.fixture
def token_client(make_app) -> FlaskClient:
    return make_app(API_TOKEN=TOKEN).test_client()


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x"]
)
def test_documents_api_needs_the_token(token_client: FlaskClient, authorization: str) -> None:
    headers = {"Authorization": authorization} if authorization else {}

    for response in (
        upload(token_client, headers=headers),
        token_client.get("/api/documents", headers=headers),
        token_client.get("/api/documents/1/text", headers=headers),
    ):
        assert_json_error(response, 401, "Unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_documents_api_accepts_the_token(token_client: FlaskClient) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}

    created = upload(token_client, headers=headers)

    assert created.status_code == 202
    assert token_client.get("/api/documents", headers=headers).get_json()["total"] == 1


@pytest.mark.parametrize("token", [TOKEN, "clé-€-トークン"])
def test_a_non_ascii_token_works_as_curl_sends_it(make_app, token: str) -> None:
    # curl and browsers send a header's non-ASCII characters as UTF-8 bytes, which
    # WSGI hands over decoded as Latin-1: the token typed is the token set.
    client = make_app(API_TOKEN=token).test_client()
    as_sent = f"Bearer {token}".encode().decode("latin-1")

    response = client.get("/api/documents", headers={"Authorization": as_sent})

    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/api/queue/stats", "/healthz", "/metrics", "/api/openapi.json"])
def test_open_endpoints_need_no_token(token_client: FlaskClient, path: str) -> None:
    assert token_client.get(path).status_code == 200


def test_openapi_says_what_the_text_and_file_routes_return(client: FlaskClient) -> None:
    paths = client.get("/api/openapi.json").get_json()["paths"]

    text = paths["/api/documents/{document_id}/text"]["get"]["responses"]["200"]
    file = paths["/api/documents/{document_id}/file"]["get"]["responses"]["200"]

    assert text["content"] == {"text/plain": {"schema": {"type": "string"}}}
    # The bytes go with the document's own content_type, so any media type.
    assert file["content"] == {"*/*": {"schema": {"type": "string", "format": "binary"}}}


@pytest.mark.parametrize(
    ("precondition", "holds"),
    [
        ({"If-Match": '"an-old-etag"'}, False),
        ({"If-Unmodified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"}, False),
        ({"If-Match": "*"}, True),
        ({"If-Unmodified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}, True),
    ],
    ids=["if-match", "if-unmodified-since", "if-match-any", "if-unmodified-since-later"],
)
def test_a_change_made_conditional_happens_only_when_its_precondition_holds(
    client: FlaskClient, precondition: dict[str, str], holds: bool
) -> None:
    # A client guarding against a change it has not seen must not delete or
    # requeue the document anyway: 412, and nothing changed.
    document_id = upload(client).get_json()["id"]

    requeued = client.post(f"/api/documents/{document_id}/reprocess", headers=precondition)
    deleted = client.delete(f"/api/documents/{document_id}", headers=precondition)

    if holds:
        assert (requeued.status_code, deleted.status_code) == (202, 204)
        return
    assert_json_error(requeued, 412, "Precondition Failed")
    assert_json_error(deleted, 412, "Precondition Failed")
    document = client.get(f"/api/documents/{document_id}").get_json()
    assert document["queue_item"]["operation"] == "process"


def test_a_precondition_on_an_unknown_document_is_404(client: FlaskClient) -> None:
    response = client.delete("/api/documents/999", headers={"If-Match": '"x"'})

    assert_json_error(response, 404, "Not Found")
