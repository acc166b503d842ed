"""The admin console in a real browser: filters, every action, CSRF, login, escaping,
live figures; and screenshots of the dashboard and of an item page to look at.

This module's server has the admin password set and no scheduler, so the items
the tests build (straight through ``DocumentQueueService`` on the same SQLite
file) stay in the states the tests put them in.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from docqueue_app.models import QueueItem, db, utcnow
from docqueue_app.queue import DocumentQueueService
from tests.admin import Queue
from tests.browser.conftest import PageEvents, admin_tab
from tests.e2e.server import ROOT, Server, run_cli
from tests.helpers import execute_sql

with contextlib.suppress(ImportError):
    from playwright.sync_api import Browser, Page, expect

PASSWORD = "browser-admin"
HOSTILE_NAME = "<img src=x onerror=alert(1)>.txt"
SCREENSHOTS = ROOT / "screenshots"
# Each element's computed SVG fill: a colour, or the url() of a pattern.
FILLS_JS = "elements => elements.map(element => getComputedStyle(element).fill)"
# admin.js polls every 5 s; a change shows within two polls.
REFRESH_MS = 12_000


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("admin-console") / "docqueue.db"


@pytest.fixture(scope="module")
def server(database: Path) -> Iterator[Server]:
    """gunicorn with the admin login on; no scheduler, so items keep their states."""
    env = {
        "DATABASE_URL": f"sqlite:///{database}",
        "DOCQUEUE_SECRET_KEY": "browser-admin-tests",
        "DOCQUEUE_SCHEDULER_ENABLED": "false",
        "DOCQUEUE_ADMIN_PASSWORD": PASSWORD,
    }
    migrated = run_cli(env, "db", "upgrade")
    assert migrated.returncode == 0, migrated.stderr
    env["PROMETHEUS_MULTIPROC_DIR"] = str(database.parent / "metrics")
    server = Server(env, log_path=database.parent / "server.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    with admin_tab(browser, server.url, PASSWORD, viewport={"width": 1400, "height": 1000}) as tab:
        yield tab


def unique(stem: str) -> str:
    """A file name no other test uses, so a file-name filter finds only this test's items."""
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def filter_items(page: Page, status: str = "", filename: str = "") -> None:
    page.locator("#status").select_option(status)
    page.locator("#filename").fill(filename)
    page.get_by_role("button", name="Filter").click()


def rows(page: Page):
    return page.locator("table.items tbody tr")


def flash(page: Page):
    return page.locator("p.notice")


def test_filter_by_status_and_file_name_then_retry_one_failed_item(
    page: Page, queue: Queue, page_events: PageEvents
) -> None:
    name = unique("invoice")
    failed = queue.item(f"{name}.pdf", "failed", error="PDF is encrypted")
    queue.item(f"{name}.txt")  # pending: filtered out by status
    page.goto("/admin/")

    filter_items(page, "failed", name)

    expect(page).to_have_url(re.compile(rf"/admin/\?status=failed&document_id=&filename={name}"))
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("PDF is encrypted")
    page.get_by_role("button", name=f"Retry item {failed}").click()
    expect(flash(page)).to_have_text(f"Retried queue item {failed}.")
    expect(page).to_have_url(re.compile(rf"status=failed.*filename={name}"))
    expect(rows(page)).to_have_count(0)  # no longer failed
    assert queue.status(failed) == "pending"
    assert page_events.errors == []


def test_bulk_retry_of_a_filter_after_confirming_the_count(page: Page, queue: Queue) -> None:
    name = unique("scan")
    ids = [queue.item(f"{name}-{n}.pdf", "failed") for n in range(3)]
    page.goto(f"/admin/?status=failed&filename={name}")

    page.get_by_role("link", name="Retry matching items…").click()
    expect(page.locator("[data-field=confirm-count]")).to_contain_text("Retry 3 items")
    page.get_by_role("button", name="Retry 3 items").click()

    expect(flash(page)).to_have_text("Retried 3 items.")
    expect(page).to_have_url(re.compile(rf"/admin/\?status=failed&filename={name}$"))
    assert [queue.status(i) for i in ids] == ["pending"] * 3


def test_cancel_a_pending_and_an_in_progress_item(page: Page, queue: Queue) -> None:
    name = unique("batch")
    pending = queue.item(f"{name}-a.txt")
    running = queue.item(f"{name}-b.txt", "in_progress")
    page.goto(f"/admin/?filename={name}")

    for item_id in (pending, running):
        page.get_by_role("button", name=f"Cancel item {item_id}").click()
        expect(flash(page)).to_have_text(f"Cancelled queue item {item_id}.")
        expect(page).to_have_url(re.compile(rf"filename={name}"))
    expect(rows(page).locator(".status")).to_have_text(["cancelled", "cancelled"])


def test_an_item_another_tab_changed_is_left_as_it_is_with_a_message(
    page: Page, browser: Browser, server: Server, queue: Queue
) -> None:
    item_id = queue.item(unique("two-tabs") + ".txt")
    page.goto(f"/admin/items/{item_id}")
    with admin_tab(browser, server.url, PASSWORD) as other:
        other.goto(f"/admin/items/{item_id}")
        other.get_by_role("button", name=f"Cancel item {item_id}").click()
        expect(flash(other)).to_have_text(f"Cancelled queue item {item_id}.")

    page.get_by_role("button", name=f"Cancel item {item_id}").click()

    expect(flash(page)).to_have_text(
        f"Queue item {item_id} was not changed: a cancelled item cannot be cancelled."
    )
    assert queue.status(item_id) == "cancelled"


def test_pause_and_resume(page: Page) -> None:
    page.goto("/admin/")
    page.get_by_role("button", name="Pause processing").click()
    expect(flash(page)).to_contain_text("Processing paused")
    expect(page.locator("[data-field=paused]")).to_have_text("paused")
    page.get_by_role("button", name="Resume processing").click()
    expect(flash(page)).to_have_text("Processing resumed.")
    expect(page.locator("[data-field=paused]")).to_have_text("running")


def test_purge_says_how_many_items_it_deletes(page: Page, queue: Queue) -> None:
    old = [_superseded_item(queue, unique("old")) for _ in range(2)]
    long_ago = utcnow() - timedelta(days=90)
    for item_id in old:
        execute_sql(
            queue.app,
            "UPDATE queue_items SET finished_at = :at WHERE id = :id",
            at=long_ago,
            id=item_id,
        )
    page.goto("/admin/?status=cancelled")

    page.locator("#purge-days").fill("60")
    page.get_by_role("button", name="Purge…").click()
    expect(page.locator("[data-field=confirm-count]")).to_contain_text("Delete 2 items")
    page.get_by_role("button", name="Delete 2 items").click()

    expect(flash(page)).to_have_text("Purged 2 items finished more than 60 days ago.")
    expect(page).to_have_url(re.compile(r"/admin/\?status=cancelled$"))
    with queue.app.app_context():
        assert all(db.session.get(QueueItem, item_id) is None for item_id in old)


def test_a_purge_age_past_the_maximum_is_caught_in_the_form(page: Page) -> None:
    page.goto("/admin/")
    days = page.locator("#purge-days")
    days.fill("40000")

    page.get_by_role("button", name="Purge…").click()

    # The browser keeps the form and says why, rather than sending it for a 400 page.
    expect(page).to_have_url(re.compile(r"/admin/$"))
    assert days.evaluate("input => input.validity.rangeOverflow") is True
    days.fill("36500")
    page.get_by_role("button", name="Purge…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Purge finished items")


def _superseded_item(queue: Queue, name: str) -> int:
    """A cancelled item that is no longer its document's latest (so a purge may take it)."""
    item_id = queue.item(f"{name}.txt", "cancelled")
    with queue.app.app_context():
        document_id = db.session.get(QueueItem, item_id).document_id
        DocumentQueueService().enqueue(document_id, "reprocess")
    return item_id


def test_a_form_posted_without_its_csrf_token_is_refused(page: Page) -> None:
    page.goto("/admin/")
    page.locator("form[action='/admin/pause'] input[name=csrf_token]").evaluate("e => e.remove()")
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Pause processing").click()
    assert navigation.value.status == 400
    expect(page.get_by_role("heading", level=1)).to_have_text("This page had expired")
    expect(page.locator("main")).to_contain_text("CSRF token is missing")
    page.goto("/admin/")
    expect(page.locator("[data-field=paused]")).to_have_text("running")


def test_the_chart_tells_failed_from_completed_by_more_than_colour(
    page: Page, queue: Queue
) -> None:
    queue.item(unique("charted") + ".txt", "completed")
    queue.item(unique("charted") + ".txt", "failed")
    page.goto("/admin/")

    def fills(selector: str) -> set[str]:
        return set(page.locator(selector).evaluate_all(FILLS_JS))

    # Red and green are one colour to many eyes: failed bars are hatched as well.
    failed, completed = fills("svg.throughput .bar-failed"), fills("svg.throughput .bar-completed")
    assert len(failed) == 1 and next(iter(failed)).startswith("url(")
    assert failed.isdisjoint(completed)
    # The legend's swatches are drawn as the bars are.
    assert fills(".legend .bar-failed") == failed
    assert fills(".legend .bar-completed") == completed


def test_every_column_of_the_items_has_a_header_with_a_name(page: Page, queue: Queue) -> None:
    queue.item(unique("headed") + ".txt", "failed")
    page.goto("/admin/?status=failed")

    expect(page.locator("table.items tbody tr").first).to_be_visible()
    names = page.locator("table.items thead th").all_text_contents()
    assert all(name.strip() for name in names), names
    expect(page.get_by_role("columnheader", name="Actions")).to_have_count(1)


def test_without_javascript_the_dashboard_promises_no_live_figures(
    page: Page, browser: Browser, server: Server
) -> None:
    promise = "Refreshed every 5 s while this tab is shown."
    page.goto("/admin/")
    expect(page.get_by_text(promise)).to_be_visible()

    with admin_tab(browser, server.url, PASSWORD, java_script_enabled=False) as still:
        still.goto("/admin/")
        expect(still.get_by_role("heading", level=1)).to_have_text("Queue admin")
        expect(still.get_by_text(promise)).to_be_hidden()


def test_a_wrong_password_is_401(browser: Browser, server: Server) -> None:
    context = browser.new_context(http_credentials={"username": "admin", "password": "wrong"})
    try:
        response = context.new_page().goto(server.url + "/admin/")
        assert response is not None and response.status == 401
    finally:
        context.close()


def test_a_hostile_file_name_shows_as_text(
    page: Page, queue: Queue, page_events: PageEvents
) -> None:
    item_id = queue.item(HOSTILE_NAME, "failed", error="<script>alert(2)</script>")
    page.goto("/admin/?filename=%3Cimg")
    expect(page.get_by_role("link", name=HOSTILE_NAME, exact=True).first).to_be_visible()
    expect(page.locator("img")).to_have_count(0)
    page.goto(f"/admin/items/{item_id}")
    expect(page.get_by_role("link", name=HOSTILE_NAME, exact=True)).to_be_visible()
    expect(page.locator("p.error")).to_have_text("<script>alert(2)</script>")
    expect(page.locator("img")).to_have_count(0)
    assert page_events.dialogs == []
    assert page_events.errors == []


def test_figures_refresh_live_and_screenshots(
    page: Page, queue: Queue, page_events: PageEvents
) -> None:
    for n in range(6):
        queue.item(unique(f"report-{n}") + ".pdf", "completed")
    queue.item(unique("broken") + ".docx", "failed", error="File is not a zip file")
    history = queue.item(
        unique("flaky") + ".pdf", "failed", error="child process ran past 60 s", retries=3
    )
    page.goto("/admin/")
    page.evaluate("window.notReloaded = true")
    pending = page.locator("[data-count=pending]")
    before = int(pending.inner_text().replace(",", ""))

    queue.item(unique("late-arrival") + ".txt")

    expect(pending).to_have_text(str(before + 1), timeout=REFRESH_MS)
    assert page.evaluate("window.notReloaded") is True
    assert page_events.errors == []
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "admin-dashboard.png"), full_page=True)

    page.goto(f"/admin/items/{history}")
    expect(page.locator("table.history tbody tr")).to_have_count(4)
    page.screenshot(path=str(SCREENSHOTS / "admin-item.png"), full_page=True)
    assert page_events.errors == []
