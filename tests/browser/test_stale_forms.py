"""Forms whose CSRF token went stale, in a real browser: a page left open past the
token's life, and a page loaded before the server restarted with another secret key.

The user must learn that nothing was done and that reloading the page fixes it,
not meet a bare "400 Bad Request: The CSRF session token is missing."
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from tests.admin import Queue
from tests.browser.conftest import admin_tab
from tests.e2e.server import Server, run_cli

with contextlib.suppress(ImportError):
    from playwright.sync_api import Browser, Page, expect

PASSWORD = "stale-forms-admin"
# Flask-WTF signs its tokens with this salt; a token is good for an hour by default.
CSRF_SALT = "wtf-csrf-token"
TWO_HOURS = 2 * 3600


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stale-forms") / "docqueue.db"


class Restartable:
    """One gunicorn on one port, restarted with another SECRET_KEY on demand."""

    def __init__(self, database: Path) -> None:
        self.env = {
            "DATABASE_URL": f"sqlite:///{database}",
            "DOCQUEUE_SCHEDULER_ENABLED": "false",
            "DOCQUEUE_ADMIN_PASSWORD": PASSWORD,
            "PROMETHEUS_MULTIPROC_DIR": str(database.parent / "metrics"),
        }
        self.log_path = database.parent / "server.log"
        self.secret_key = ""
        self.server = self._start(port=None)

    @property
    def url(self) -> str:
        return self.server.url

    def restart_with_a_new_secret_key(self) -> None:
        port = self.server.port
        self.server.stop()
        self.server = self._start(port)

    def stop(self) -> None:
        self.server.stop()

    def _start(self, port: int | None) -> Server:
        self.secret_key = uuid.uuid4().hex
        server = Server(
            {**self.env, "DOCQUEUE_SECRET_KEY": self.secret_key}, log_path=self.log_path
        )
        if port is not None:
            server.port = port  # the open page's forms post to this origin
        return server.start()


@pytest.fixture(scope="module")
def server(database: Path) -> Iterator[Restartable]:
    migrated = run_cli({"DATABASE_URL": f"sqlite:///{database}"}, "db", "upgrade")
    assert migrated.returncode == 0, migrated.stderr
    server = Restartable(database)
    yield server  # pytest runs the rest at teardown, whatever the tests did
    server.stop()


@pytest.fixture
def page(browser: Browser, server: Restartable) -> Iterator[Page]:
    """A tab without JavaScript (every form here is a plain one), logged in as admin."""
    with admin_tab(browser, server.url, PASSWORD, java_script_enabled=False) as tab:
        yield tab


def age_the_forms(page: Page, secret_key: str, seconds: int) -> None:
    """Make the page's CSRF tokens as old as a page left open ``seconds`` ago."""

    class SignedInThePast(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - seconds

    fields = page.locator("input[name=csrf_token]")
    for n in range(fields.count()):
        field = fields.nth(n)
        raw = URLSafeTimedSerializer(secret_key, salt=CSRF_SALT).loads(field.input_value())
        old = URLSafeTimedSerializer(secret_key, CSRF_SALT, signer=SignedInThePast).dumps(raw)
        field.evaluate("(input, value) => { input.value = value; }", old)


def expect_the_expired_page(page: Page, back_to: str) -> None:
    expect(page.get_by_role("heading", level=1)).to_have_text("This page had expired")
    expect(page.locator("main")).to_contain_text("Nothing was done")
    expect(page.get_by_role("link", name="Reload the page")).to_have_attribute("href", back_to)


def test_reprocess_on_a_page_left_open_for_two_hours_says_to_reload(
    page: Page, server: Restartable, queue: Queue
) -> None:
    item_id = queue.item(f"left-open-{uuid.uuid4().hex[:6]}.txt", "completed")
    document_id = queue.document_id(item_id)
    page.goto(f"/documents/{document_id}")
    age_the_forms(page, server.secret_key, TWO_HOURS)

    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Reprocess").click()

    assert navigation.value.status == 400
    expect_the_expired_page(page, f"/documents/{document_id}")
    assert queue.status(item_id) == "completed"
    page.get_by_role("link", name="Reload the page").click()
    page.get_by_role("button", name="Reprocess").click()
    expect(page.locator("p.notice")).to_have_text("Queued for processing again.")


def test_an_admin_action_after_the_server_restarted_with_a_new_key_says_to_reload(
    page: Page, server: Restartable, queue: Queue
) -> None:
    item_id = queue.item(f"restart-{uuid.uuid4().hex[:6]}.txt", "failed")
    page.goto(f"/admin/items/{item_id}")

    server.restart_with_a_new_secret_key()
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name=f"Retry item {item_id}").click()

    assert navigation.value.status == 400
    expect_the_expired_page(page, f"/admin/items/{item_id}")
    assert queue.status(item_id) == "failed"
    page.get_by_role("link", name="Reload the page").click()
    page.get_by_role("button", name=f"Retry item {item_id}").click()
    expect(page.locator("p.notice")).to_have_text(f"Retried queue item {item_id}.")
    assert queue.status(item_id) == "pending"


def test_an_upload_after_the_server_restarted_asks_for_the_files_again(
    page: Page, server: Restartable
) -> None:
    name = f"after-restart-{uuid.uuid4().hex[:6]}.txt"
    file = {"name": name, "mimeType": "text/plain", "buffer": name.encode()}
    page.goto("/")
    page.locator("#file").set_input_files([file])

    server.restart_with_a_new_secret_key()
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Upload").click()

    assert navigation.value.status == 400
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Nothing was uploaded")
    expect(alert).to_contain_text("Choose the files again")
    page.locator("#file").set_input_files([file])
    page.get_by_role("button", name="Upload").click()
    expect(page).to_have_url(re.compile(r"/documents/\d+$"))
    expect(page.get_by_role("heading", level=1)).to_have_text(name)
    page.goto(f"/documents?q={name}")
    expect(page.get_by_role("link", name=name)).to_have_count(1)
