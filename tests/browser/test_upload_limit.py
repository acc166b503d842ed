"""Files over the upload limit, in a real browser against a server whose limit is 1 MB:
the page names the file and the limit, with JavaScript and without, and nothing is
stored. A body past the request limit (the upload limit plus 1 MB of form framing)
is refused by werkzeug before any view runs, so its message is the page's own.
"""

from __future__ import annotations

import contextlib
import re
import uuid

import pytest

from tests.browser.test_pages import PROCESSED_MS, text_file
from tests.browser.test_upload_experience import upload_row
from tests.e2e.server import Server

with contextlib.suppress(ImportError):
    from playwright.sync_api import Browser, Page, Request, expect

MB = 1024 * 1024
LIMIT_MESSAGE = "larger than the upload limit of 1 MB"


@pytest.fixture(scope="module")
def server_settings() -> dict[str, str]:
    return {"DOCQUEUE_MAX_UPLOAD_MB": "1"}


def big_file(name: str, size: int) -> dict:
    return {"name": name, "mimeType": "text/plain", "buffer": b"word " * (size // 5)}


def listed(page: Page, name: str) -> int:
    page.goto(f"/documents?q={name}")
    return page.get_by_role("link", name=name).count()


@pytest.mark.parametrize(
    ("size", "message"),
    [(MB + MB // 2, LIMIT_MESSAGE), (3 * MB, "Each file may have up to 1 MB")],
    ids=["over-the-limit", "over-the-request-limit"],
)
def test_a_file_over_the_limit_without_javascript_shows_the_form_with_the_limit(
    browser: Browser, server: Server, size: int, message: str
) -> None:
    name = f"too-big-{uuid.uuid4().hex[:6]}.txt"
    context = browser.new_context(base_url=server.url, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto("/")
        page.locator("#file").set_input_files([big_file(name, size)])

        with page.expect_navigation() as navigation:
            page.get_by_role("button", name="Upload").click()

        assert navigation.value.status == 413
        expect(page.get_by_role("heading", level=1)).to_have_text("Upload documents")
        expect(page.get_by_role("alert")).to_contain_text(message)
        assert listed(page, name) == 0
    finally:
        context.close()


def test_with_javascript_a_file_over_the_limit_is_refused_unsent_while_the_other_goes_on(
    page: Page,
) -> None:
    name = f"far-too-big-{uuid.uuid4().hex[:6]}.txt"
    uploads_sent: list[Request] = []

    def on_request(request: Request) -> None:
        if request.method == "POST":
            uploads_sent.append(request)

    page.goto("/")
    page.on("request", on_request)
    page.locator("#file").set_input_files(
        [big_file(name, 3 * MB), text_file("fits.txt", "A file within the limit.")]
    )
    page.get_by_role("button", name="Upload").click()

    refused = upload_row(page, name)
    expect(refused.locator("[data-field=status]")).to_have_text("refused")
    expect(refused.get_by_role("alert")).to_have_text(f"{name} is {LIMIT_MESSAGE}.")
    fits = upload_row(page, "fits.txt")
    expect(fits.locator("[data-field=status]")).to_have_text("completed", timeout=PROCESSED_MS)
    assert len(uploads_sent) == 1  # fits.txt's
    expect(page).to_have_url(re.compile(r"/$"))
    assert listed(page, name) == 0
