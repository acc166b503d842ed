"""Failed webhook deliveries in a real browser: from the dashboard's count to the
list, then "Deliver again" with its CSRF token, and the message that says so."""

from __future__ import annotations

import contextlib
import re

from docqueue_app.models import QueueItem, db
from tests.admin import Queue
from tests.browser import test_admin_console as console
from tests.browser.conftest import PageEvents
from tests.browser.test_admin_console import SCREENSHOTS, flash, unique
from tests.delivery_rows import delivery_state, record_delivery

# The console tests' server (admin login on, no scheduler), its database and a tab
# logged in as admin; conftest's queue seeds items in that database.
database, server, page = console.database, console.server, console.page

with contextlib.suppress(ImportError):
    from playwright.sync_api import Page, expect


def test_deliver_again_from_the_dashboard(
    page: Page, queue: Queue, page_events: PageEvents
) -> None:
    name = unique("hooked")
    item_id = queue.item(f"{name}.pdf", "completed")
    with queue.app.app_context():
        document_id = db.session.get(QueueItem, item_id).document_id
    url = f"https://hooks.example.com/{name}"
    delivery_id = record_delivery(
        queue.app, document_id, url=url, last_status_code=503, last_error="HTTP 503 Unavailable"
    )
    row = page.locator(f"tr[data-delivery='{delivery_id}']")
    page.goto("/admin/")

    page.get_by_role("link", name=re.compile(r"failed deliver")).click()

    expect(page).to_have_url(re.compile(r"/admin/deliveries$"))
    expect(row).to_contain_text(url)
    expect(row.get_by_role("link", name=f"{name}.pdf")).to_be_visible()
    expect(row).to_contain_text("HTTP 503 Unavailable")
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "admin-deliveries.png"), full_page=True)
    page.get_by_role("button", name=f"Deliver again {delivery_id}").click()

    expect(flash(page)).to_have_text(f"Delivery {delivery_id} will be sent again.")
    expect(page).to_have_url(re.compile(r"/admin/deliveries$"))
    expect(row).to_have_count(0)
    assert delivery_state(queue.app, delivery_id) == ("pending", 0)
    assert page_events.errors == []
