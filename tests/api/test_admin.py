"""Queue management through the admin API: login, item list and detail, retry,
cancel, purge, pause and resume."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient

from docqueue_app.models import utcnow
from docqueue_app.queue import DocumentQueueService
from tests.api import assert_json_error, run_queue
from tests.helpers import execute_sql, upload

PASSWORD = "s3cret"
FAILING_PROCESSOR = "tests.processing.sample_processors:raise_runtime_error"

ADMIN_ROUTES = [
    ("GET", "/api/queue/items"),
    ("GET", "/api/queue/items/1"),
    ("POST", "/api/queue/items/1/retry"),
    ("POST", "/api/queue/items/1/cancel"),
    ("POST", "/api/queue/purge"),
    ("POST", "/api/queue/pause"),
    ("POST", "/api/queue/resume"),
]


def basic_auth(user: str = "admin", password: str = PASSWORD) -> dict[str, str]:
    """The Authorization header of an HTTP Basic login."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def admin_app(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    app = make_app(ADMIN_PASSWORD=PASSWORD)
    yield app
    # The pause switch is a row the per-test cleanup keeps: never leave it on.
    with app.app_context():
        DocumentQueueService().set_paused(False)


@pytest.fixture
def admin(admin_app: Flask) -> FlaskClient:
    return admin_client(admin_app)


def admin_client(app: Flask) -> FlaskClient:
    """A client that sends the admin login with every request."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = basic_auth()["Authorization"]
    return client


def upload_id(client: FlaskClient, name: str) -> int:
    return upload(client, f"contents of {name}".encode(), name).get_json()["id"]


def item_of(client: FlaskClient, document_id: int) -> dict:
    """The document's latest queue item, as its document shows it."""
    return client.get(f"/api/documents/{document_id}").get_json()["queue_item"]


def document_status(client: FlaskClient, document_id: int) -> str:
    return client.get(f"/api/documents/{document_id}").get_json()["status"]


@pytest.fixture
def failed_document(make_app: Callable[..., Flask]) -> int:
    """A document whose only attempt failed (a processor bug, no attempts left)."""
    failing = make_app(PROCESSOR=FAILING_PROCESSOR, MAX_ATTEMPTS=1)
    document_id = upload_id(failing.test_client(), "broken.txt")
    assert run_queue(failing)["failed"] == 1
    return document_id


# -- login ------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_api_is_403_while_no_password_is_configured(
    client: FlaskClient, method: str, path: str
) -> None:
    response = client.open(path, method=method, headers=basic_auth())

    body = assert_json_error(response, 403, "Forbidden")
    assert "DOCQUEUE_ADMIN_PASSWORD" in body["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic_auth(password="wrong"),
        basic_auth(user="root"),
        basic_auth(password=PASSWORD + "x"),
        {"Authorization": f"Bearer {PASSWORD}"},
        {"Authorization": "Basic not-base64!"},
    ],
)
@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_api_is_401_without_the_admin_login(
    admin_app: Flask, method: str, path: str, headers: dict[str, str]
) -> None:
    response = admin_app.test_client().open(path, method=method, headers=headers)

    assert_json_error(response, 401, "Unauthorized")
    assert response.headers["WWW-Authenticate"] == 'Basic realm="docqueue admin"'


def test_admin_login_opens_the_api_and_stats_stay_open(admin_app: Flask) -> None:
    client = admin_app.test_client()

    assert client.get("/api/queue/items", headers=basic_auth()).status_code == 200
    assert client.get("/api/queue/stats").status_code == 200


def test_admin_api_needs_no_api_token(make_app: Callable[..., Flask]) -> None:
    client = make_app(ADMIN_PASSWORD=PASSWORD, API_TOKEN="token").test_client()

    assert client.post("/api/queue/pause", headers=basic_auth()).get_json() == {"paused": True}
    assert client.post("/api/queue/resume", headers=basic_auth()).get_json() == {"paused": False}


# -- list -------------------------------------------------------------------------


def test_items_are_listed_newest_first_in_an_envelope(admin: FlaskClient) -> None:
    ids = [upload_id(admin, f"doc{n}.txt") for n in range(3)]

    body = admin.get("/api/queue/items").get_json()

    assert (body["page"], body["per_page"], body["total"]) == (1, 20, 3)
    assert [item["document_id"] for item in body["items"]] == ids[::-1]
    assert set(body["items"][0]) == {
        "id", "document_id", "operation", "status", "priority", "attempts", "max_attempts",
        "run_at", "locked_by", "lease_expires_at", "last_error", "created_at", "started_at",
        "finished_at",
    }  # fmt: skip


def test_items_filter_by_status_and_document_and_page(admin_app: Flask, admin: FlaskClient) -> None:
    done = upload_id(admin, "done.txt")
    run_queue(admin_app)
    waiting = [upload_id(admin, f"waiting{n}.txt") for n in range(3)]

    completed = admin.get("/api/queue/items?status=completed").get_json()
    of_document = admin.get(f"/api/queue/items?document_id={waiting[0]}").get_json()
    second_page = admin.get("/api/queue/items?status=pending&page=2&per_page=2").get_json()

    assert [item["document_id"] for item in completed["items"]] == [done]
    assert [item["document_id"] for item in of_document["items"]] == [waiting[0]]
    assert [item["document_id"] for item in second_page["items"]] == [waiting[0]]
    assert second_page["total"] == 3
    assert admin.get("/api/queue/items?status=").get_json()["total"] == 4


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=done", "status"),
        ("per_page=500", "per_page"),
        ("page=0", "page"),
        ("document_id=abc", "document_id"),
    ],
)
def test_bad_item_list_parameters_are_422(admin: FlaskClient, query: str, field: str) -> None:
    response = admin.get(f"/api/queue/items?{query}")

    body = assert_json_error(response, 422, "Unprocessable Entity")
    assert list(body["errors"]["query"]) == [field]


# -- detail -----------------------------------------------------------------------


def test_detail_shows_the_history_of_a_failure_and_its_retry(
    admin_app: Flask, admin: FlaskClient, failed_document: int
) -> None:
    item_id = item_of(admin, failed_document)["id"]

    failed = admin.get(f"/api/queue/items/{item_id}").get_json()
    admin.post(f"/api/queue/items/{item_id}/retry")
    run_queue(admin_app)
    retried = admin.get(f"/api/queue/items/{item_id}").get_json()

    assert failed["status"] == "failed"
    [attempt] = failed["history"]
    assert set(attempt) == {
        "attempt", "worker", "started_at", "finished_at", "duration_seconds", "outcome", "error",
    }  # fmt: skip
    assert attempt["attempt"] == 1
    assert attempt["outcome"] == "failed"
    assert "simulated processor bug" in attempt["error"]
    assert attempt["worker"]
    assert attempt["duration_seconds"] >= 0
    assert retried["status"] == "completed"
    assert [entry["outcome"] for entry in retried["history"]] == ["failed", "completed"]
    assert retried["history"][1]["error"] is None


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/queue/items/999"),
        ("POST", "/api/queue/items/999/retry"),
        ("POST", "/api/queue/items/999/cancel"),
    ],
)
def test_unknown_item_is_404(admin: FlaskClient, method: str, path: str) -> None:
    assert_json_error(admin.open(path, method=method), 404, "Not Found")


# -- retry and cancel -------------------------------------------------------------


def test_retry_puts_a_failed_item_back_to_pending_then_it_runs(
    admin_app: Flask, admin: FlaskClient, failed_document: int
) -> None:
    item_id = item_of(admin, failed_document)["id"]

    response = admin.post(f"/api/queue/items/{item_id}/retry")

    assert response.status_code == 200
    item = response.get_json()
    assert (item["id"], item["status"], item["attempts"]) == (item_id, "pending", 0)
    assert document_status(admin, failed_document) == "pending"
    assert run_queue(admin_app) == {"processed": 1, "completed": 1, "failed": 0, "retried": 0}
    assert document_status(admin, failed_document) == "completed"


def test_retry_of_a_pending_item_is_409(admin: FlaskClient) -> None:
    item_id = item_of(admin, upload_id(admin, "waiting.txt"))["id"]

    response = admin.post(f"/api/queue/items/{item_id}/retry")

    body = assert_json_error(response, 409, "Conflict")
    assert "pending" in body["message"]


def test_retry_is_409_while_the_document_has_a_pending_item(
    admin: FlaskClient, failed_document: int
) -> None:
    failed_item = item_of(admin, failed_document)["id"]
    admin.post(f"/api/documents/{failed_document}/reprocess")

    response = admin.post(f"/api/queue/items/{failed_item}/retry")

    assert_json_error(response, 409, "Conflict")
    assert admin.get(f"/api/queue/items/{failed_item}").get_json()["status"] == "failed"


def test_cancel_withdraws_a_pending_item_and_its_document(
    admin_app: Flask, admin: FlaskClient
) -> None:
    document_id = upload_id(admin, "unwanted.txt")
    item_id = item_of(admin, document_id)["id"]

    response = admin.post(f"/api/queue/items/{item_id}/cancel")

    assert response.status_code == 200
    assert response.get_json()["status"] == "cancelled"
    assert document_status(admin, document_id) == "cancelled"
    assert run_queue(admin_app)["processed"] == 0


def test_cancel_of_a_completed_item_is_409(admin_app: Flask, admin: FlaskClient) -> None:
    document_id = upload_id(admin, "done.txt")
    run_queue(admin_app)
    item_id = item_of(admin, document_id)["id"]

    response = admin.post(f"/api/queue/items/{item_id}/cancel")

    body = assert_json_error(response, 409, "Conflict")
    assert "completed" in body["message"]
    assert document_status(admin, document_id) == "completed"


def test_a_cancelled_run_cannot_complete_the_item_an_admin_retried(
    admin_app: Flask, admin: FlaskClient
) -> None:
    """Cancel a running item, retry it, the same worker claims it again: the cancelled
    run's late result must change nothing (SPEC §3), only the new run's may finish it."""
    document_id = upload_id(admin, "raced.txt")
    with admin_app.app_context():
        service = DocumentQueueService()
        [cancelled_run] = service.get_pending_items(1)
        assert service.mark_in_progress(cancelled_run, worker_id="host:1:worker")
    item_id = item_of(admin, document_id)["id"]
    assert admin.post(f"/api/queue/items/{item_id}/cancel").status_code == 200
    assert admin.post(f"/api/queue/items/{item_id}/retry").status_code == 200
    with admin_app.app_context():
        service = DocumentQueueService()
        [new_run] = service.get_pending_items(1)
        assert service.mark_in_progress(new_run, worker_id="host:1:worker")

        late = service.mark_completed(
            cancelled_run, {"text": "stale", "title": None, "page_count": None, "metadata": {}}
        )

    assert late is False
    assert item_of(admin, document_id)["status"] == "in_progress"
    assert document_status(admin, document_id) == "processing"


# -- purge ------------------------------------------------------------------------


def age_items_of(app: Flask, document_id: int, days: float) -> None:
    """Make the document's items look finished ``days`` ago."""
    execute_sql(
        app,
        "UPDATE queue_items SET finished_at = :t WHERE document_id = :d",
        t=utcnow() - timedelta(days=days),
        d=document_id,
    )


def processed_twice(app: Flask, client: FlaskClient, name: str) -> int:
    """A document processed, then reprocessed: an older item and its latest."""
    document_id = upload_id(client, name)
    run_queue(app)
    client.post(f"/api/documents/{document_id}/reprocess")
    run_queue(app)
    return document_id


def test_purge_deletes_old_finished_items_and_keeps_documents(
    admin_app: Flask, admin: FlaskClient
) -> None:
    old, recent = processed_twice(admin_app, admin, "old.txt"), upload_id(admin, "recent.txt")
    run_queue(admin_app)
    age_items_of(admin_app, old, days=10)

    response = admin.post("/api/queue/purge", json={"older_than_days": 7})

    assert response.status_code == 200
    assert response.get_json() == {"deleted": 2}
    purged = admin.get(f"/api/documents/{old}").get_json()
    # All its items went: the document keeps its status and shows none (SPEC §4).
    assert (purged["status"], purged["queue_item"]) == ("completed", None)
    assert admin.get(f"/api/documents/{old}/text").status_code == 200
    assert item_of(admin, recent)["status"] == "completed"
    assert admin.get("/api/queue/items").get_json()["total"] == 1
    assert admin.post(f"/api/documents/{old}/reprocess").status_code == 202


def test_purge_keeps_a_latest_item_while_an_older_one_stays(
    admin_app: Flask, admin: FlaskClient
) -> None:
    # Were the latest to go alone, the older item would become the document's
    # latest and contradict the status the document shows.
    twice, once = upload_id(admin, "twice.txt"), upload_id(admin, "once.txt")
    admin.post(f"/api/queue/items/{item_of(admin, twice)['id']}/cancel")
    admin.post(f"/api/documents/{twice}/reprocess")
    run_queue(admin_app)
    latest_of_twice = item_of(admin, twice)["id"]
    for document_id in (twice, once):
        age_items_of(admin_app, document_id, days=2)

    response = admin.post(
        "/api/queue/purge", json={"older_than_days": 1, "statuses": ["completed"]}
    )

    assert response.get_json() == {"deleted": 1}
    kept = admin.get(f"/api/documents/{twice}").get_json()
    assert (kept["status"], kept["queue_item"]["id"]) == ("completed", latest_of_twice)
    assert admin.get(f"/api/documents/{once}").get_json()["queue_item"] is None


def test_purge_only_touches_the_statuses_named(admin_app: Flask, admin: FlaskClient) -> None:
    completed, cancelled = upload_id(admin, "completed.txt"), upload_id(admin, "cancelled.txt")
    cancelled_item = item_of(admin, cancelled)["id"]
    admin.post(f"/api/queue/items/{cancelled_item}/cancel")
    admin.post(f"/api/documents/{cancelled}/reprocess")
    run_queue(admin_app)
    admin.post(f"/api/documents/{completed}/reprocess")
    run_queue(admin_app)
    for document_id in (completed, cancelled):
        age_items_of(admin_app, document_id, days=2)

    response = admin.post(
        "/api/queue/purge", json={"older_than_days": 1, "statuses": ["cancelled"]}
    )

    assert response.get_json() == {"deleted": 1}
    assert admin.get(f"/api/queue/items/{cancelled_item}").status_code == 404
    assert document_status(admin, cancelled) == "completed"
    assert admin.get(f"/api/queue/items?document_id={completed}").get_json()["total"] == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"older_than_days": 1, "statuses": ["pending"]}, "statuses"),
        ({"older_than_days": 1, "statuses": ["completed", "in_progress"]}, "statuses"),
        ({"older_than_days": 1, "statuses": ["done"]}, "statuses"),
        ({"older_than_days": 1, "statuses": []}, "statuses"),
        ({"older_than_days": -1}, "older_than_days"),
        ({"older_than_days": "soon"}, "older_than_days"),
        ({"older_than_days": 10**9}, "older_than_days"),
        ({}, "older_than_days"),
    ],
)
def test_bad_purge_body_is_422_and_deletes_nothing(
    admin_app: Flask, admin: FlaskClient, body: dict, field: str
) -> None:
    upload_id(admin, "kept.txt")
    run_queue(admin_app)

    response = admin.post("/api/queue/purge", json=body)

    errors = assert_json_error(response, 422, "Unprocessable Entity")["errors"]
    assert list(errors["json"]) == [field]
    assert isinstance(errors["json"][field], list)
    assert admin.get("/api/queue/items").get_json()["total"] == 1


def test_purge_with_invalid_json_is_400(admin: FlaskClient) -> None:
    response = admin.post("/api/queue/purge", data="{older", content_type="application/json")

    assert_json_error(response, 400, "Bad Request")


# -- pause and resume -------------------------------------------------------------


def test_pause_stops_processing_but_not_uploads_until_resumed(
    admin_app: Flask, admin: FlaskClient
) -> None:
    paused = admin.post("/api/queue/pause")
    upload_response = upload(admin, b"queued while paused", "later.txt")
    while_paused = run_queue(admin_app)
    stats = admin.get("/api/queue/stats").get_json()
    resumed = admin.post("/api/queue/resume")

    assert paused.get_json() == {"paused": True}
    assert upload_response.status_code == 202
    assert while_paused["processed"] == 0
    assert (stats["paused"], stats["pending"]) == (True, 1)
    assert resumed.get_json() == {"paused": False}
    assert admin.get("/api/queue/stats").get_json()["paused"] is False
    assert run_queue(admin_app)["processed"] == 1


# -- OpenAPI ----------------------------------------------------------------------


def test_openapi_lists_the_admin_routes(client: FlaskClient) -> None:
    paths = client.get("/api/openapi.json").get_json()["paths"]

    assert {
        "/api/queue/items",
        "/api/queue/items/{item_id}",
        "/api/queue/items/{item_id}/retry",
        "/api/queue/items/{item_id}/cancel",
        "/api/queue/purge",
        "/api/queue/pause",
        "/api/queue/resume",
    } <= set(paths)
    assert "post" in paths["/api/queue/purge"]
