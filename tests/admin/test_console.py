"""The admin console at /admin/ through the test client, on SQLite and PostgreSQL:
login, counts, filters, pagination, every action as a plain form, CSRF, escaping."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from docqueue_app.admin import queries
from docqueue_app.models import QueueItem, db, utcnow
from docqueue_app.queue import DocumentQueueService
from tests.admin import Queue
from tests.helpers import execute_sql

PASSWORD = "console-s3cret"
HOSTILE_NAME = "<img src=x onerror=alert(1)>.txt"


def basic_auth(password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()


@pytest.fixture
def admin_app(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    app = make_app(ADMIN_PASSWORD=PASSWORD)
    yield app
    with app.app_context():  # the pause switch outlives the per-test cleanup
        DocumentQueueService().set_paused(False)


@pytest.fixture
def admin(admin_app: Flask) -> FlaskClient:
    client = admin_app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = basic_auth()
    return client


@pytest.fixture
def queue(admin_app: Flask) -> Queue:
    return Queue(admin_app)


def item_ids(response: TestResponse) -> list[int]:
    """The ids of the items the page lists, in order."""
    return [int(i) for i in re.findall(r'data-item="(\d+)"', response.get_data(as_text=True))]


def flashes(client: FlaskClient) -> list[str]:
    """The messages flashed since the last look (taken, as a page would show them)."""
    with client.session_transaction() as session:
        return [message for _, message in session.pop("_flashes", [])]


def assert_back_to(response: TestResponse, path: str) -> None:
    assert response.status_code == 303, response.data[:300]
    assert response.headers["Location"] == path


# -- login ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/admin/"), ("GET", "/admin/stats.json"), ("POST", "/admin/pause")],
)
def test_console_is_off_without_a_password_and_asks_for_the_login(
    make_app: Callable[..., Flask], method: str, path: str
) -> None:
    assert make_app().test_client().open(path, method=method).status_code == 403
    client = make_app(ADMIN_PASSWORD=PASSWORD).test_client()
    missing = client.open(path, method=method)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Basic")
    wrong = client.open(path, method=method, headers={"Authorization": basic_auth("nope")})
    assert wrong.status_code == 401


# -- reading ----------------------------------------------------------------------


def test_dashboard_counts_each_status_and_the_oldest_due_age(
    admin: FlaskClient, queue: Queue, admin_app: Flask
) -> None:
    for state in ("pending", "pending", "in_progress", "completed", "failed", "cancelled"):
        queue.item(state=state)
    execute_sql(admin_app, "UPDATE queue_items SET run_at = :at", at=utcnow() - timedelta(hours=2))
    stats = admin.get("/admin/stats.json").get_json()
    assert {name: c["label"] for name, c in stats["counts"].items()} == {
        "pending": "2",
        "in_progress": "1",
        "completed": "1",
        "failed": "1",
        "cancelled": "1",
    }
    assert stats["total"]["label"] == "6"
    assert stats["oldest_due_age"] == "2 h 0 min"
    assert stats["paused"] is False
    page = admin.get("/admin/").get_data(as_text=True)
    assert 'data-count="pending">2<' in page
    assert "2 h 0 min" in page
    assert "<svg" in page and "1 completed" in page and "1 failed" in page


def test_counts_past_the_cap_are_shown_as_such(
    admin: FlaskClient, admin_app: Flask, monkeypatch: pytest.MonkeyPatch, queue: Queue
) -> None:
    monkeypatch.setattr(queries, "COUNT_CAP", 2)
    for _ in range(3):
        queue.item()
    stats = admin.get("/admin/stats.json").get_json()
    assert stats["counts"]["pending"]["label"] == "2+"
    assert stats["counts"]["pending"]["capped"] is True
    assert "2+" in admin.get("/admin/").get_data(as_text=True)


def test_filters_by_status_document_file_name_and_error(admin: FlaskClient, queue: Queue) -> None:
    report = queue.item("Quarterly_Report.pdf", "failed", error="PDF is encrypted")
    notes = queue.item("notes.txt", "failed", error="processor crashed: MemoryError")
    pending = queue.item("report-draft.txt")
    with admin.application.app_context():
        notes_document = db.session.get(QueueItem, notes).document_id

    assert item_ids(admin.get("/admin/")) == [pending, notes, report]  # newest first
    assert item_ids(admin.get("/admin/?status=failed")) == [notes, report]
    assert item_ids(admin.get(f"/admin/?document_id={notes_document}")) == [notes]
    assert item_ids(admin.get("/admin/?filename=REPORT")) == [pending, report]
    assert item_ids(admin.get("/admin/?filename=report&status=pending")) == [pending]
    assert item_ids(admin.get("/admin/?error=memoryerror")) == [notes]
    # LIKE wildcards in a search are plain characters.
    assert item_ids(admin.get("/admin/?filename=%25")) == []
    assert admin.get("/admin/?status=bogus").status_code == 400
    assert admin.get("/admin/?document_id=x").status_code == 400


def test_pages_through_the_items(
    admin: FlaskClient, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    from docqueue_app.admin import views

    monkeypatch.setattr(views, "PER_PAGE", 2)
    ids = [queue.item(f"file-{n}.txt") for n in range(5)]
    first = admin.get("/admin/?filename=file")
    assert item_ids(first) == ids[::-1][:2]
    assert "Page 1 of 3" in first.get_data(as_text=True)
    assert 'href="/admin/?page=2&amp;filename=file"' in first.get_data(as_text=True)
    assert item_ids(admin.get("/admin/?filename=file&page=3")) == ids[:1]
    assert admin.get("/admin/?page=0").status_code == 400


def test_a_page_past_the_end_says_so_and_links_to_the_first_page(
    admin: FlaskClient, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    from docqueue_app.admin import views

    monkeypatch.setattr(views, "PER_PAGE", 2)
    for n in range(3):
        queue.item(f"stale-{n}.txt")

    page = " ".join(admin.get("/admin/?filename=stale&page=9").get_data(as_text=True).split())

    assert "No queue items" not in page
    assert "Page 9 is past the end: 3 matching items fill 2 pages." in page
    assert 'href="/admin/?filename=stale">Go to the first page</a>' in page


def test_a_nul_in_a_search_is_dropped(admin: FlaskClient, queue: Queue) -> None:
    # No stored file name or error holds NUL, and PostgreSQL refuses it even as a parameter.
    failed = queue.item("scan.pdf", "failed", error="PDF is encrypted")
    for search in ("filename=%00", "error=%00", "filename=sc%00an", "error=encr%00ypted"):
        response = admin.get(f"/admin/?{search}")
        assert response.status_code == 200, search
        assert item_ids(response) == [failed]
    confirm = admin.get("/admin/bulk/retry?filename=%00")
    assert confirm.status_code == 200
    assert "Retry 1 item" in confirm.get_data(as_text=True)


def test_a_nul_in_a_bulk_form_is_dropped(admin: FlaskClient, queue: Queue) -> None:
    failed = queue.item("scan.pdf", "failed")
    response = admin.post("/admin/bulk/retry", data={"filename": "sc\x00an"})
    assert_back_to(response, "/admin/?filename=scan")
    assert queue.status(failed) == "pending"


@pytest.mark.parametrize("path", ["/admin/items/0", "/admin/items/abc", "/admin/nope"])
def test_a_console_path_no_route_matches_is_an_html_404(admin: FlaskClient, path: str) -> None:
    response = admin.get(path)
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "404 Not Found" in response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/admin/?document_id=abc", "/admin/items/999999", "/admin/nope"])
def test_an_error_page_of_the_console_leads_back_to_the_console(
    admin: FlaskClient, path: str
) -> None:
    page = admin.get(path).get_data(as_text=True)
    assert '<a href="/admin/">Back to the queue admin</a>' in page
    assert "Back to the documents" not in page


def test_the_login_page_of_the_console_leads_to_the_documents(admin_app: Flask) -> None:
    # Whoever could not log in has no console to go back to.
    page = admin_app.test_client().get("/admin/").get_data(as_text=True)
    assert '<a href="/documents">Back to the documents</a>' in page


def test_a_wrong_method_on_the_console_is_an_html_405(admin: FlaskClient) -> None:
    response = admin.delete("/admin/")
    assert response.status_code == 405
    assert response.mimetype == "text/html"
    assert "GET" in response.headers["Allow"]


def test_item_page_shows_its_document_and_attempt_history(admin: FlaskClient, queue: Queue) -> None:
    item_id = queue.item("history.txt", "failed", error="bad <b>bytes</b>", retries=2)
    page = admin.get(f"/admin/items/{item_id}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "history.txt" in html and 'href="/documents/' in html
    assert "worker-1" in html and "bad &lt;b&gt;bytes&lt;/b&gt;" in html
    history = html.split('class="documents history"')[1]
    assert history.count("<tr>") == 4  # the header and three attempts
    assert "worker-2" in history and "transient error 2" in history and ">retry<" in history
    assert f'action="/admin/items/{item_id}/retry"' in html
    assert admin.get("/admin/items/999999").status_code == 404


def test_a_hostile_file_name_is_shown_as_text(admin: FlaskClient, queue: Queue) -> None:
    item_id = queue.item(HOSTILE_NAME, "failed", error="<script>alert(2)</script>")
    for path in ("/admin/", f"/admin/items/{item_id}", "/admin/?filename=%3Cimg"):
        html = admin.get(path).get_data(as_text=True)
        assert "<img src=x" not in html and "<script>alert" not in html
        assert "&lt;img src=x onerror=alert(1)&gt;.txt" in html


# -- actions without JavaScript ------------------------------------------------------


def test_retry_one_failed_item_goes_back_with_a_flash(admin: FlaskClient, queue: Queue) -> None:
    item_id = queue.item(state="failed")
    back = "/admin/?status=failed&filename=note"
    response = admin.post(f"/admin/items/{item_id}/retry", data={"next": back})
    assert_back_to(response, back)
    assert flashes(admin) == [f"Retried queue item {item_id}."]
    assert queue.status(item_id) == "pending"
    # Retrying it again changes nothing, and says why.
    admin.post(f"/admin/items/{item_id}/retry", data={"next": back})
    assert "cannot be retried" in flashes(admin)[0]


def test_cancel_a_pending_and_an_in_progress_item(admin: FlaskClient, queue: Queue) -> None:
    pending, running = queue.item(), queue.item(state="in_progress")
    for item_id in (pending, running):
        response = admin.post(f"/admin/items/{item_id}/cancel", data={"next": "/admin/?page=1"})
        assert_back_to(response, "/admin/?page=1")
        assert flashes(admin) == [f"Cancelled queue item {item_id}."]
        assert queue.status(item_id) == "cancelled"
    # Only a page of the console is a place to go back to.
    other = admin.post(f"/admin/items/{pending}/cancel", data={"next": "https://evil.test/admin/"})
    assert_back_to(other, "/admin/")


def test_bulk_retry_of_a_filter_confirms_the_count_then_retries(
    admin: FlaskClient, queue: Queue
) -> None:
    wanted = [queue.item(f"scan-{n}.pdf", "failed") for n in range(3)]
    other = queue.item("other.txt", "failed")
    queue.item("scan-pending.pdf")
    confirm = admin.get("/admin/bulk/retry?status=failed&filename=scan")
    assert confirm.status_code == 200
    assert "Retry 3 items" in confirm.get_data(as_text=True)

    response = admin.post("/admin/bulk/retry", data={"status": "failed", "filename": "scan"})
    assert_back_to(response, "/admin/?status=failed&filename=scan")
    assert flashes(admin) == ["Retried 3 items."]
    assert [queue.status(i) for i in wanted] == ["pending"] * 3
    assert queue.status(other) == "failed"


def test_bulk_cancel_of_a_filter(admin: FlaskClient, queue: Queue) -> None:
    ids = [queue.item("batch.txt"), queue.item("batch.txt", "in_progress")]
    done = queue.item("batch.txt", "completed")
    assert "Cancel 2 items" in admin.get("/admin/bulk/cancel?filename=batch").get_data(True)
    response = admin.post("/admin/bulk/cancel", data={"filename": "batch"})
    assert_back_to(response, "/admin/?filename=batch")
    assert flashes(admin) == ["Cancelled 2 items."]
    assert [queue.status(i) for i in ids] == ["cancelled", "cancelled"]
    assert queue.status(done) == "completed"
    assert admin.get("/admin/bulk/explode").status_code == 400


def test_retry_all_failed(admin: FlaskClient, queue: Queue) -> None:
    failed = [queue.item(state="failed") for _ in range(2)]
    response = admin.post("/admin/retry-failed", data={"next": "/admin/?status=failed"})
    assert_back_to(response, "/admin/?status=failed")
    assert flashes(admin) == ["Retried 2 items."]
    assert [queue.status(i) for i in failed] == ["pending", "pending"]


def test_purge_confirms_how_many_items_it_will_delete(
    admin: FlaskClient, queue: Queue, admin_app: Flask
) -> None:
    first = queue.item("old.txt", "failed")
    with admin_app.app_context():
        DocumentQueueService().retry_item(first)
        document_id = db.session.get(QueueItem, first).document_id
        DocumentQueueService().cancel_item(first)
        DocumentQueueService().enqueue(document_id, "reprocess")  # first is no longer latest
    queue.item("done.txt", "completed")  # its only item: it goes, the document stays
    long_ago = utcnow() - timedelta(days=40)
    execute_sql(admin_app, "UPDATE queue_items SET finished_at = :at", at=long_ago)

    confirm = admin.get("/admin/purge?days=30&next=/admin/%3Fstatus%3Dcancelled")
    html = confirm.get_data(as_text=True)
    assert "Delete 2 items " in html and "Delete 2 items</button>" in html
    response = admin.post("/admin/purge", data={"days": "30", "next": "/admin/?status=cancelled"})
    assert_back_to(response, "/admin/?status=cancelled")
    assert flashes(admin) == ["Purged 2 items finished more than 30 days ago."]
    with admin_app.app_context():
        assert db.session.get(QueueItem, first) is None
    assert admin.get("/admin/purge?days=-1").status_code == 400


def test_pause_and_resume(admin: FlaskClient) -> None:
    response = admin.post("/admin/pause", data={"next": "/admin/?status=pending"})
    assert_back_to(response, "/admin/?status=pending")
    assert "paused" in flashes(admin)[0]
    assert admin.get("/admin/stats.json").get_json()["paused"] is True
    page = admin.get("/admin/").get_data(as_text=True)
    assert "Resume processing" in page
    assert_back_to(admin.post("/admin/resume", data={"next": "/admin/"}), "/admin/")
    assert flashes(admin) == ["Processing resumed."]
    assert admin.get("/admin/stats.json").get_json()["paused"] is False


@pytest.mark.parametrize(
    "unsafe_next",
    ["/admin/\r\nX-Injected: yes", "/admin/\nX: y", "/admin/?status=failed\r", "/admin/\x00"],
    ids=["crlf", "lf", "cr", "nul"],
)
def test_a_next_with_control_characters_goes_back_to_the_dashboard(
    admin: FlaskClient, queue: Queue, unsafe_next: str
) -> None:
    # It would split the Location header (werkzeug raises: a 500 after the action ran).
    item_id = queue.item(state="failed")
    response = admin.post(f"/admin/items/{item_id}/retry", data={"next": unsafe_next})
    assert_back_to(response, "/admin/")
    assert queue.status(item_id) == "pending"
    assert_back_to(admin.post("/admin/pause", data={"next": unsafe_next}), "/admin/")
    assert admin.get("/admin/stats.json").get_json()["paused"] is True


def test_a_form_posted_without_its_csrf_token_is_refused(
    make_app: Callable[..., Flask], queue: Queue
) -> None:
    app = make_app(ADMIN_PASSWORD=PASSWORD, WTF_CSRF_ENABLED=True)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = basic_auth()
    item_id = queue.item(state="failed")
    refused = client.post(f"/admin/items/{item_id}/retry", data={"next": "/admin/"})
    assert refused.status_code == 400
    assert "CSRF" in refused.get_data(as_text=True)
    assert queue.status(item_id) == "failed"
    assert client.post("/admin/pause").status_code == 400
    # With the token the page carries, the same form goes through.
    page = client.get(f"/admin/items/{item_id}").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    accepted = client.post(
        f"/admin/items/{item_id}/retry", data={"next": "/admin/", "csrf_token": token}
    )
    assert_back_to(accepted, "/admin/")
    assert queue.status(item_id) == "pending"


def test_pages_carry_the_content_security_policy(admin: FlaskClient) -> None:
    policy = admin.get("/admin/").headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy
