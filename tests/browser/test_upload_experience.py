"""The upload page with JavaScript: dropped files upload side by side and are followed
to their outcome on the page; the document page; the API documentation."""

from __future__ import annotations

import base64
import contextlib
import re
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from tests.browser import SLOW_MARKER
from tests.browser.conftest import CONTRASTS_JS, PageEvents
from tests.browser.test_pages import GIF_BYTES, HOSTILE_NAME, PROCESSED_MS
from tests.e2e.server import Server

with contextlib.suppress(ImportError):
    from playwright.sync_api import JSHandle, Locator, Page, expect

SCREENSHOTS = Path(__file__).resolve().parents[2] / "screenshots"
BROKEN_JSON = b'{"total": 3, "items": [1, 2,'
# Builds a DataTransfer holding the files, as the browser makes one for a real drop.
_DATA_TRANSFER_JS = """files => {
    const data = new DataTransfer();
    for (const file of files) {
        const bytes = Uint8Array.from(atob(file.base64), c => c.charCodeAt(0));
        data.items.add(new File([bytes], file.name, {type: file.type}));
    }
    return data;
}"""


def text_bytes(text: str) -> bytes:
    """A fresh token keeps the file from being a duplicate of an earlier test's."""
    return f"{text}\n\nupload {uuid.uuid4().hex}\n".encode()


def drop_files(page: Page, files: list[tuple[str, str, bytes]]) -> None:
    """Drop (name, type, bytes) files on the upload page's drop zone."""
    payload = [
        {"name": name, "type": kind, "base64": base64.b64encode(data).decode()}
        for name, kind, data in files
    ]
    transfer: JSHandle = page.evaluate_handle(_DATA_TRANSFER_JS, payload)
    zone = page.locator("[data-drop-zone]")
    for event in ("dragenter", "dragover", "drop"):
        zone.dispatch_event(event, {"dataTransfer": transfer})


def upload_row(page: Page, name: str) -> Locator:
    return page.locator("ul.uploads li").filter(has=page.get_by_text(name, exact=True))


def screenshot(page: Page, name: str, full_page: bool = True) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=full_page)


def test_two_dropped_files_both_complete_on_the_upload_page(
    page: Page, page_events: PageEvents
) -> None:
    page.goto("/")
    page.locator("#priority").select_option("7")

    drop_files(
        page,
        [
            ("dropped-one.txt", "text/plain", text_bytes("The first dropped file.")),
            ("dropped-two.md", "text/markdown", text_bytes(f"# Second\n\n{SLOW_MARKER}")),
        ],
    )

    expect(page).to_have_url(re.compile(r"/$"))  # no navigation: all on this page
    for name in ("dropped-one.txt", "dropped-two.md"):
        row = upload_row(page, name)
        expect(row).to_have_count(1)
        expect(row.locator("[data-field=status]")).to_have_text("completed", timeout=PROCESSED_MS)
        expect(row.get_by_role("link", name=name, exact=True)).to_have_attribute(
            "href", re.compile(r"^/documents/\d+$")
        )
    link = upload_row(page, "dropped-two.md").get_by_role("link")
    link.click()
    expect(page.locator("dl.fields dt:text-is('Priority') + dd")).to_have_text("7")
    assert page_events.errors == []


def test_the_file_picker_uploads_through_the_page_too(page: Page) -> None:
    page.goto("/")
    page.locator("#file").set_input_files(
        [{"name": "picked.txt", "mimeType": "text/plain", "buffer": text_bytes("Picked.")}]
    )
    page.get_by_role("button", name="Upload").click()

    row = upload_row(page, "picked.txt")
    expect(row.locator("[data-field=status]")).to_have_text("completed", timeout=PROCESSED_MS)
    expect(page).to_have_url(re.compile(r"/$"))


def test_a_refused_file_says_why_next_to_it_while_the_other_completes(page: Page) -> None:
    page.goto("/")

    drop_files(
        page,
        [
            ("refused.gif", "image/gif", GIF_BYTES),
            ("accepted.txt", "text/plain", text_bytes("Accepted alongside a refused file.")),
        ],
    )

    refused = upload_row(page, "refused.gif")
    expect(refused.locator("[data-field=status]")).to_have_text("refused")
    expect(refused.get_by_role("alert")).to_contain_text("not a supported type")
    expect(refused.get_by_role("link")).to_have_count(0)
    accepted = upload_row(page, "accepted.txt")
    expect(accepted.locator("[data-field=status]")).to_have_text("completed", timeout=PROCESSED_MS)
    expect(accepted.get_by_role("alert")).to_have_count(0)


def test_a_failing_document_shows_its_error_and_attempts(
    page: Page, page_events: PageEvents
) -> None:
    name = f"broken-{uuid.uuid4().hex[:8]}.json"
    page.goto("/")
    drop_files(page, [(name, "application/json", BROKEN_JSON)])

    row = upload_row(page, name)
    expect(row.locator("[data-field=status]")).to_have_text("failed", timeout=PROCESSED_MS)
    expect(row.locator(".upload-message")).not_to_be_empty()
    row.get_by_role("link", name=name, exact=True).click()

    expect(page.get_by_role("heading", level=1)).to_have_text(name)
    expect(page.locator(".state [data-field=status]")).to_have_text("failed")
    error = page.locator("p.error[data-field=error]")
    expect(error).not_to_be_empty()
    attempts = page.locator("table.attempts tbody tr")
    expect(attempts).to_have_count(1)
    expect(attempts.first.locator("td").nth(0)).to_have_text("1")
    expect(attempts.first.locator("td").nth(2)).to_have_text(re.compile(r"UTC$"))
    expect(attempts.first.locator("td").nth(3)).to_have_text("failed")
    expect(attempts.first.locator("td").nth(4)).to_have_text(error.inner_text())
    expect(page.get_by_role("button", name="Reprocess")).to_be_visible()
    screenshot(page, "document-failed.png")
    assert page_events.errors == []


def test_a_hostile_file_name_is_text_on_every_page(page: Page, page_events: PageEvents) -> None:
    page.goto("/")
    drop_files(page, [(HOSTILE_NAME, "text/plain", text_bytes("A name made of markup."))])

    row = upload_row(page, HOSTILE_NAME)
    expect(row.locator("[data-field=status]")).to_have_text("completed", timeout=PROCESSED_MS)
    expect(page.locator("img")).to_have_count(0)
    link = row.get_by_role("link", name=HOSTILE_NAME, exact=True)
    href = link.get_attribute("href")

    page.goto("/documents?q=onerror")
    expect(page.get_by_role("link", name=HOSTILE_NAME, exact=True)).to_have_count(1)
    expect(page.locator("#q")).to_have_value("onerror")
    expect(page.locator("img")).to_have_count(0)

    page.goto(href)
    expect(page.get_by_role("heading", level=1)).to_have_text(HOSTILE_NAME)
    expect(page.locator("img")).to_have_count(0)
    screenshot(page, "document.png")

    page.get_by_role("link", name="Delete…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Delete {HOSTILE_NAME}?")
    page.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(re.compile(r"/documents$"))
    expect(page.get_by_role("status")).to_have_text(f"Deleted {HOSTILE_NAME}.")
    expect(page.locator("img")).to_have_count(0)
    assert page_events.dialogs == []
    assert page_events.errors == []


def test_upload_page_mid_upload(page: Page) -> None:
    """One big upload slowed down (throttled network) while the others finish: the screenshot."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    page.goto("/")
    drop_files(
        page,
        [
            ("finished.txt", "text/plain", text_bytes("Finished quickly.")),
            ("picture.gif", "image/gif", GIF_BYTES),
        ],
    )
    finished = upload_row(page, "finished.txt").locator("[data-field=status]")
    expect(finished).to_have_text("completed", timeout=PROCESSED_MS)
    slow = text_bytes(f"# Slow\n\n{SLOW_MARKER}")
    drop_files(page, [("still-processing.md", "text/markdown", slow)])
    processing = upload_row(page, "still-processing.md").locator("[data-field=status]")
    expect(processing).to_have_text("processing", timeout=PROCESSED_MS)
    # About 4 s for the held-back file's 2 MB: the screenshot catches it half sent.
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 500_000},
    )
    drop_files(page, [("held-back.txt", "text/plain", text_bytes("held " * 400_000))])
    held = upload_row(page, "held-back.txt")
    page.wait_for_function(
        "() => { const bar = document.querySelector('ul.uploads li:last-child progress');"
        " return bar && bar.value > 10; }"
    )
    expect(held.locator("[data-field=status]")).to_have_text("uploading")
    screenshot(page, "upload-mid-upload.png")

    expect(held.locator("[data-field=status]")).to_have_text("completed", timeout=PROCESSED_MS)


def test_api_docs_renders_the_operations_from_this_host_only(
    page: Page, page_events: PageEvents, server: Server
) -> None:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    page.goto("/api/docs")

    expect(page.locator(".opblock").first).to_be_visible(timeout=10_000)
    paths = page.locator(".opblock-summary-path")
    expect(paths.filter(has_text=re.compile(r"^/api/documents$")).first).to_be_visible()
    assert paths.count() >= 10
    screenshot(page, "api-docs.png", full_page=False)
    page.locator(".opblock-summary-path", has_text="/api/queue/stats").first.click()
    expect(page.locator(".opblock.is-open")).to_have_count(1)
    own_host = urlsplit(server.url).hostname
    web = [url for url in requested if urlsplit(url).scheme in ("http", "https")]
    assert web and all(urlsplit(url).hostname == own_host for url in web), web
    assert page_events.errors == []


# Swagger UI's own colours: white on light green, blue and red method badges, and so on.
_SWAGGER_TEXT = ".opblock-summary-method, .info .title pre.version, .info .url, .btn.authorize span"


def test_api_docs_can_be_read_at_the_contrast_wcag_asks_for(page: Page) -> None:
    page.goto("/api/docs")
    expect(page.locator(".opblock").first).to_be_visible(timeout=10_000)

    contrasts = page.locator(_SWAGGER_TEXT).evaluate_all(CONTRASTS_JS)

    assert {text for text, _ in contrasts} >= {"GET", "POST", "DELETE", "Authorize"}
    assert [(text, ratio) for text, ratio in contrasts if ratio < 4.5] == []
    # Swagger UI titles the page with an h2; the page has its h1 all the same.
    expect(page.get_by_role("heading", level=1)).to_have_text("API documentation")
