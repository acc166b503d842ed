"""The pages in a real browser: upload, follow a document live, list, refuse, escape."""

from __future__ import annotations

import contextlib
import re
import uuid

from tests.browser import SLOW_MARKER
from tests.browser.conftest import PageEvents
from tests.e2e.server import Server

# Without playwright the require_browser fixture skips (or, under CI, fails) these tests.
with contextlib.suppress(ImportError):
    from playwright.sync_api import Locator, Page, Response, expect

HOSTILE_NAME = "<img src=x onerror=alert(1)>.txt"
DETAIL_URL = re.compile(r"/documents/(\d+)$")
# The start of a GIF: an image type docqueue does not take (PNG, JPEG and TIFF go to OCR).
GIF_BYTES = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00"
# Sending the form and loading the page it redirects to.
NAVIGATION_MS = 10_000
# The slow document (SLOW_SECONDS) plus a claim, the 1.5 s polls and the reload.
PROCESSED_MS = 15_000


def text_file(name: str, text: str, mime_type: str = "text/plain") -> dict:
    """A file for set_input_files; a fresh token keeps it from being a duplicate upload."""
    body = f"{text}\n\nupload {uuid.uuid4().hex}\n"
    return {"name": name, "mimeType": mime_type, "buffer": body.encode()}


def submit(page: Page, files: list[dict], priority: str | None = None) -> Response:
    """Fill the form at / and send it without upload.js; the response of the page it lands on."""
    page.goto("/")
    page.locator("#file").set_input_files(files)
    if priority is not None:
        page.locator("#priority").select_option(priority)
    # form.submit() sends the plain form, as a browser without JavaScript does;
    # the Upload button's submit event is upload.js's (test_upload_experience.py).
    with page.expect_navigation(timeout=NAVIGATION_MS) as navigation:
        page.locator("form.upload-form").evaluate("form => form.submit()")
    response = navigation.value
    assert response is not None
    return response


def field(page: Page, name: str) -> Locator:
    """The value next to a label in the page's field lists."""
    return page.locator(f"dl.fields dt:text-is('{name}') + dd")


def test_upload_lands_on_the_document_page_which_follows_it_until_completed(
    page: Page, page_events: PageEvents
) -> None:
    phrase = "Revenue grew in every region this quarter"
    upload = text_file(
        "quarterly.md",
        f"# Quarterly report\n\n{phrase}.\n\n{SLOW_MARKER}",
        mime_type="text/markdown",
    )

    response = submit(page, [upload], priority="8")

    assert response.status == 200
    expect(page).to_have_url(DETAIL_URL)
    expect(page.get_by_role("heading", level=1)).to_have_text("quarterly.md")
    status = page.locator(".state [data-field=status]")
    # Processing takes SLOW_SECONDS, so the page opened on a live document...
    expect(page.locator("[data-status-url]")).to_have_count(1)
    assert status.inner_text() in ("pending", "processing")
    expect(field(page, "Priority")).to_have_text("8")
    expect(page.locator("pre.preview")).to_have_count(0)
    # ...and the page changes by itself from here on: mark this instance of it.
    page.evaluate("window.openedByTheTest = true")

    # A poll shows "processing" in place (a reloaded page would show a finished state)...
    expect(status).to_have_text("processing", timeout=PROCESSED_MS)
    # ...in a live region, so that a screen reader says so too...
    announced = page.get_by_role("status").filter(has_text="Status:")
    expect(announced).to_contain_text("processing")
    # ...and once processed the page reloads itself, with the outcome.
    expect(status).to_have_text("completed", timeout=PROCESSED_MS)
    assert page.evaluate("window.openedByTheTest") is None, "the page did not reload itself"
    expect(page.locator("[data-status-url]")).to_have_count(0)
    expect(page.locator(".state .hint")).to_have_count(0)
    expect(field(page, "Type")).to_have_text("text/markdown")
    expect(field(page, "Title")).to_have_text("Quarterly report")
    expect(field(page, "Words")).to_have_text(re.compile(r"^\d+$"))
    expect(field(page, "Characters")).to_have_text(re.compile(r"^\d+$"))
    expect(field(page, "Processed")).to_have_text(re.compile(r"UTC$"))
    expect(field(page, "State")).to_have_text("completed")
    expect(field(page, "Attempts")).to_have_text(re.compile(r"^1 of \d+$"))
    expect(page.locator("pre.preview")).to_contain_text(phrase)
    assert page_events.errors == []


def test_two_files_at_once_land_on_the_list(page: Page) -> None:
    files = [
        text_file("first-of-two.txt", "The first of two files."),
        text_file("second-of-two.csv", "name,count\nsecond,2", mime_type="text/csv"),
    ]

    response = submit(page, files)

    assert response.status == 200
    expect(page).to_have_url(re.compile(r"/documents$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Documents")
    rows = page.locator("table.documents tbody tr")
    for name in ("first-of-two.txt", "second-of-two.csv"):
        row = rows.filter(has=page.get_by_role("link", name=name, exact=True))
        expect(row).to_have_count(1)
        expect(row.locator(".status")).to_have_text(re.compile(r"^(pending|processing|completed)$"))


def test_a_hostile_file_name_is_shown_as_text_and_runs_nothing(
    page: Page, page_events: PageEvents, server: Server
) -> None:
    submit(page, [text_file(HOSTILE_NAME, "A file whose name is markup.")])

    expect(page).to_have_url(DETAIL_URL)
    expect(page.get_by_role("heading", level=1)).to_have_text(HOSTILE_NAME)
    expect(page).to_have_title(f"{HOSTILE_NAME} · docqueue")
    expect(page.locator("img")).to_have_count(0)
    # Let the page's script run its course under the CSP: polls, then the reload.
    expect(page.locator(".state [data-field=status]")).to_have_text(
        "completed", timeout=PROCESSED_MS
    )
    expect(page.get_by_role("heading", level=1)).to_have_text(HOSTILE_NAME)
    expect(page.locator("img")).to_have_count(0)

    page.goto("/documents")

    link = page.get_by_role("link", name=HOSTILE_NAME, exact=True)
    expect(link).to_have_count(1)
    expect(link).to_have_attribute("href", DETAIL_URL)
    expect(page.locator("img")).to_have_count(0)
    assert page_events.dialogs == []
    assert page_events.errors == []


def test_an_unsupported_file_shows_the_form_again_with_the_reason(page: Page) -> None:
    picture = {"name": "picture.gif", "mimeType": "image/gif", "buffer": GIF_BYTES}
    response = submit(page, [picture], priority="9")

    assert response.status == 415
    assert response.request.method == "POST"
    expect(page.get_by_role("heading", level=1)).to_have_text("Upload documents")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("picture.gif")
    expect(alert).to_contain_text("not a supported type")
    expect(page.locator("#file")).to_be_visible()
    expect(page.get_by_role("button", name="Upload")).to_be_enabled()
    # The priority chosen is kept for the next try.
    expect(page.locator("#priority")).to_have_value("9")

    page.goto("/documents")

    expect(page.get_by_role("link", name="picture.gif")).to_have_count(0)
