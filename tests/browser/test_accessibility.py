"""Every page a user and an operator use, audited by axe-core in chromium for WCAG 2.1 A
and AA (and axe's best practices: landmarks, heading order), in each state a page has,
with plain content and with hostile content (a 255-character file name that is markup,
an error with no space to break at); and the main flows done with the keyboard alone.

axe-core comes from the ``axe-playwright-python`` package (the dev extra), which
bundles its ``axe.min.js``. A failure lists each rule broken, its impact and the
elements that break it.

The module's server has the admin password set and no scheduler, so the documents
and items seeded here keep the states they are given; it runs on SQLite and on
PostgreSQL (a count on PostgreSQL shows the planner's estimate beside it). The 403
and 503 pages come from a second server that has no admin password and whose
PostgreSQL does not answer.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from docqueue_app import create_app
from docqueue_app.models import QueueItem, db
from docqueue_app.queue import DocumentQueueService, process_document_queue
from tests.admin import Queue
from tests.browser.conftest import CONTRASTS_JS, admin_tab, running
from tests.conftest import TABLES
from tests.delivery_rows import record_delivery
from tests.e2e.server import Server, free_port
from tests.helpers import execute_sql, wait_until

with contextlib.suppress(ImportError):
    from axe_playwright_python.sync_playwright import Axe
    from playwright.sync_api import Browser, Locator, Page, Response, expect

PASSWORD = "browser-a11y"
# WCAG 2.0 and 2.1, levels A and AA, and axe's best practices (landmarks, heading order,
# one h1): https://github.com/dequelabs/axe-core/blob/develop/doc/API.md#axe-core-tags
AUDITED_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]
# Hostile content: a name that is markup and as long as a file name may be (255), and
# an error with no space to wrap at.
HOSTILE_NAME = ("<img src=x onerror=alert(1)>" + "quarterly-report-" * 13)[:252] + ".md"
HOSTILE_ERROR = "Traceback: " + "/very/deep/path" * 40 + " <script>alert(1)</script>"
PLAIN = "plain"
HOSTILE = "hostile"
VARIANTS = (PLAIN, HOSTILE)
# Swagger UI draws /api/docs from openapi.json after the page has loaded.
SWAGGER_MS = 10_000


@dataclass
class Seeded:
    """The documents and items of each variant, in the states the pages show."""

    completed: dict[str, int]  # document ids
    pending: dict[str, int]  # document ids
    failed_document: dict[str, int]  # document ids
    failed_item: dict[str, int]  # queue item ids, with attempts before the last
    processing_item: dict[str, int]  # queue item ids, claimed by a worker
    filename: dict[str, str]
    queue: Queue  # builds more items in the server's database


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('accessibility') / 'docqueue.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="module")
def server_settings(database_url: str) -> dict[str, str]:
    """conftest's server on this database, with the admin login on and no scheduler, so
    the documents keep their states."""
    return {
        "DATABASE_URL": database_url,
        "DOCQUEUE_SCHEDULER_ENABLED": "false",
        "DOCQUEUE_ADMIN_PASSWORD": PASSWORD,
    }


class AnsweringServer(Server):
    """A server that is up once it answers at all: its database is meant to be down."""

    def wait_healthy(self, timeout: float = 30) -> None:
        wait_until(self._answers, timeout, interval=0.1)

    def _answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, "server exited"
        try:
            self.get("/healthz")
        except OSError:
            return False
        return True


@pytest.fixture(scope="module")
def broken_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """gunicorn with no admin password (the console is 403) on a PostgreSQL that never
    answers (every page that needs the database is 503)."""
    folder = tmp_path_factory.mktemp("accessibility-broken")
    env = {
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere",
        "DOCQUEUE_SECRET_KEY": "browser-accessibility",
        "DOCQUEUE_SCHEDULER_ENABLED": "false",
        "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics"),
    }
    with running(AnsweringServer(env, log_path=folder / "server.log")) as server:
        yield server


@pytest.fixture(scope="module")
def seeded(server: Server, database_url: str) -> Seeded:
    """Each variant's documents: one completed (metadata and text), one pending, one
    being processed, one failed after two transient failures; and a failed webhook
    delivery of each."""
    app = create_app(
        {
            "DATABASE_URL": database_url,
            "SCHEDULER_ENABLED": False,
            "PROCESS_ISOLATION": "none",
            "SECRET_KEY": "seeding",
        }
    )
    if database_url.startswith("postgresql"):
        execute_sql(app, f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    names = {PLAIN: "quarterly-report.md", HOSTILE: HOSTILE_NAME}
    # The hostile text is longer than its preview's box: the box scrolls.
    completed = {
        PLAIN: _processed_document(app, names[PLAIN], lines=3),
        HOSTILE: _processed_document(app, names[HOSTILE], lines=200),
    }
    queue = Queue(app)
    pending = {variant: queue.item(names[variant]) for variant in VARIANTS}
    failed_item = {
        PLAIN: queue.item(names[PLAIN], "failed", error="PDF is encrypted", retries=2),
        HOSTILE: queue.item(names[HOSTILE], "failed", error=HOSTILE_ERROR, retries=2),
    }
    workers = {PLAIN: "web-1:4242", HOSTILE: "<b>worker</b>-" + "0123456789abcdef" * 12}
    processing_item = {
        variant: _claimed_item(queue, names[variant], workers[variant]) for variant in VARIANTS
    }
    for variant in VARIANTS:
        record_delivery(
            app,
            completed[variant],
            url=f"https://hooks.example.com/{names[variant]}",
            last_error=HOSTILE_ERROR if variant == HOSTILE else "HTTP 503 Service Unavailable",
        )
    return Seeded(
        completed=completed,
        pending={variant: queue.document_id(pending[variant]) for variant in VARIANTS},
        failed_document={variant: queue.document_id(failed_item[variant]) for variant in VARIANTS},
        failed_item=failed_item,
        processing_item=processing_item,
        filename=names,
        queue=queue,
    )


def _processed_document(app, filename: str, lines: int) -> int:
    """A Markdown document processed by the built-in extractor: title, metadata, and a
    text of ``lines`` lines after the first paragraph."""
    body = "".join(f"Line {n} of the report.\n" for n in range(lines))
    text = f"# Quarterly report\n\nRevenue grew in every region.\n\n{body}{uuid.uuid4()}\n"
    with app.app_context():
        service = DocumentQueueService()
        document, _ = service.submit_document(filename, text.encode(), "text/markdown")
        process_document_queue()
        item = db.session.scalar(db.select(QueueItem).where(QueueItem.document_id == document.id))
        assert item.status == "completed", item.last_error
        return document.id


def _claimed_item(queue: Queue, filename: str, worker: str) -> int:
    """An item that ``worker`` claimed and is processing: its lease runs for minutes."""
    item_id = queue.item(filename)
    with queue.app.app_context():
        assert DocumentQueueService().mark_in_progress(db.session.get(QueueItem, item_id), worker)
    return item_id


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    with admin_tab(browser, server.url, PASSWORD, viewport={"width": 1280, "height": 900}) as tab:
        yield tab


def assert_accessible(page: Page) -> None:
    """axe-core finds nothing on the page as it is now; else the failure names each rule
    broken (its impact and how many elements break it), then each element.

    What axe-core leaves to review counts as broken too, but for contrasts it cannot
    measure: text on an SVG image (the dashboard chart's labels, --muted on white:
    5.98:1), on a background image or next to a pseudo element (Swagger UI's selects
    and headings), and one-character tokens (test_api_docs_code_examples_can_be_read).
    """
    expect(page.locator("main")).to_be_visible()
    results = Axe().run(
        page,
        options={
            "runOnly": {"type": "tag", "values": AUDITED_TAGS},
            "resultTypes": ["violations", "incomplete"],
        },
    )
    response = results.response
    response["violations"] += [
        finding for finding in response["incomplete"] if finding["id"] != "color-contrast"
    ]
    if results.violations_count:
        pytest.fail(
            f"{page.url}\n{results.generate_snapshot()}\n\n{results.generate_report()}",
            pytrace=False,
        )


# -- the pages, each in its states -----------------------------------------------------

Visit = Callable[[Page, Seeded, str], None]


def at(path: str) -> Visit:
    """The visit of a page that shows every variant at once, or none."""

    def visit(page: Page, seeded: Seeded, variant: str) -> None:
        page.goto(path)

    return visit


def upload_with_progress(page: Page, seeded: Seeded, variant: str) -> None:
    """upload.js's rows: one file accepted and followed, one refused with its reason."""
    page.goto("/")
    accepted = f"accepted {uuid.uuid4()}".encode()
    page.locator("#file").set_input_files(
        [
            {"name": seeded.filename[variant], "mimeType": "text/plain", "buffer": accepted},
            {"name": "picture.gif", "mimeType": "image/gif", "buffer": b"GIF89a\x01\x00"},
        ]
    )
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("ul.uploads [data-status=pending]")).to_have_count(1)
    expect(page.locator("ul.uploads [data-status=refused]")).to_have_count(1)


def upload_refused(page: Page, seeded: Seeded, variant: str) -> None:
    """The plain form (no JavaScript) sent with a refused file: the form again, the reason."""
    page.goto("/")
    page.locator("#file").set_input_files(
        [{"name": seeded.filename[variant], "mimeType": "image/gif", "buffer": b"GIF89a\x01"}]
    )
    with page.expect_navigation():
        page.locator("form.upload-form").evaluate("form => form.submit()")
    expect(page.get_by_role("alert")).to_be_visible()


def document_pending(page: Page, seeded: Seeded, variant: str) -> None:
    page.goto(f"/documents/{seeded.pending[variant]}")
    expect(page.get_by_role("status")).to_contain_text("pending")


def document_processing(page: Page, seeded: Seeded, variant: str) -> None:
    page.goto(f"/documents/{seeded.queue.document_id(seeded.processing_item[variant])}")
    expect(page.get_by_role("status")).to_contain_text("processing")


def document_completed(page: Page, seeded: Seeded, variant: str) -> None:
    page.goto(f"/documents/{seeded.completed[variant]}")
    expect(page.get_by_role("region", name="Text")).to_contain_text("Revenue grew")


def document_failed(page: Page, seeded: Seeded, variant: str) -> None:
    page.goto(f"/documents/{seeded.failed_document[variant]}")
    expect(page.locator("table.attempts tbody tr")).to_have_count(3)


def document_delete(page: Page, seeded: Seeded, variant: str) -> None:
    page.goto(f"/documents/{seeded.completed[variant]}/delete")


def stale_form(page: Page, seeded: Seeded, variant: str) -> None:
    """A form whose CSRF token ran out: the 400 page that says nothing was done."""
    page.goto(f"/documents/{seeded.completed[variant]}")
    page.locator("input[name=csrf_token]").first.evaluate("input => input.value = 'stale'")
    page.get_by_role("button", name="Reprocess").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("This page had expired")


def dashboard_filtered(page: Page, seeded: Seeded, variant: str) -> None:
    page.goto("/admin/?status=failed&filename=quarterly")
    expect(page.locator("table.items tbody tr")).to_have_count(len(VARIANTS))


def queue_item(page: Page, seeded: Seeded, variant: str) -> None:
    page.goto(f"/admin/items/{seeded.failed_item[variant]}")
    expect(page.locator("table.history tbody tr")).to_have_count(3)


def queue_item_processing(page: Page, seeded: Seeded, variant: str) -> None:
    page.goto(f"/admin/items/{seeded.processing_item[variant]}")
    cancel = page.get_by_role("button", name=f"Cancel item {seeded.processing_item[variant]}")
    expect(cancel).to_be_visible()


def deliveries(page: Page, seeded: Seeded, variant: str) -> None:
    page.goto("/admin/deliveries")
    expect(page.locator("tr[data-delivery]")).to_have_count(len(VARIANTS))


def api_docs(page: Page, seeded: Seeded, variant: str) -> None:
    page.goto("/api/docs")
    expect(page.locator(".opblock").first).to_be_visible(timeout=SWAGGER_MS)


def api_docs_operation_open(page: Page, seeded: Seeded, variant: str) -> None:
    """An operation opened: its parameters, and its example answers in code blocks."""
    api_docs(page, seeded, variant)
    page.locator(".opblock-summary-control").first.click()
    expect(page.locator(".opblock.is-open .responses-table").first).to_be_visible()


# The pages whose content depends on a document: audited with each variant.
DOCUMENT_PAGES: list[Visit] = [
    upload_with_progress,
    upload_refused,
    document_pending,
    document_processing,
    document_completed,
    document_failed,
    document_delete,
    stale_form,
    queue_item,
    queue_item_processing,
]
# The pages that show every variant at once, or none.
OTHER_PAGES: dict[str, Visit] = {
    "upload_form": at("/"),
    "document_list": at("/documents?per_page=2"),
    "document_list_empty": at("/documents?q=nothing-has-this-name&status=failed"),
    "not_found": at("/documents/999999999"),
    "dashboard": at("/admin/"),
    "dashboard_filtered": dashboard_filtered,
    "dashboard_past_the_end": at("/admin/?page=500"),
    "confirm_bulk_retry": at("/admin/bulk/retry?status=failed&filename=quarterly"),
    "confirm_bulk_cancel": at("/admin/bulk/cancel?status=pending"),
    "confirm_purge": at("/admin/purge?days=0"),
    "deliveries": deliveries,
    "console_not_found": at("/admin/items/999999999"),
    "api_docs": api_docs,
    "api_docs_operation_open": api_docs_operation_open,
}
CASES = [
    pytest.param(visit, variant, id=f"{visit.__name__}-{variant}")
    for visit in DOCUMENT_PAGES
    for variant in VARIANTS
] + [pytest.param(visit, PLAIN, id=name) for name, visit in OTHER_PAGES.items()]


@pytest.mark.parametrize(("visit", "variant"), CASES)
def test_page_passes_the_wcag_audit(page: Page, seeded: Seeded, visit: Visit, variant: str) -> None:
    visit(page, seeded, variant)

    assert_accessible(page)


# WCAG 1.4.10 (Reflow): 1280 CSS pixels zoomed to 400%.
NARROWEST = {"width": 320, "height": 800}
# What reaches past the right edge, outside tables: a data table may scroll sideways
# (two-dimensional content is exempt), the rest of the page may not.
PAST_THE_EDGE_JS = """() => {
    const edge = document.documentElement.clientWidth;
    return [...document.body.querySelectorAll("*")]
        .filter(element => !element.closest("table"))
        .filter(element => element.getBoundingClientRect().right > edge + 1)
        .map(element => element.outerHTML.slice(0, 120));
}"""


@pytest.mark.parametrize(("visit", "variant"), CASES)
def test_page_reflows_to_320_css_pixels(
    page: Page, seeded: Seeded, visit: Visit, variant: str
) -> None:
    page.set_viewport_size(NARROWEST)
    visit(page, seeded, variant)

    assert page.evaluate(PAST_THE_EDGE_JS) == []


def test_api_docs_code_examples_can_be_read_at_the_contrast_wcag_asks_for(
    page: Page, seeded: Seeded
) -> None:
    """The example answers' numbers were #d36363 on #333 (3.45:1): too short a text for
    axe-core to judge, so measured here."""
    api_docs_operation_open(page, seeded, PLAIN)
    tokens = page.locator(".opblock.is-open .highlight-code .microlight span[style]")
    expect(tokens.first).to_be_visible()

    contrasts = tokens.evaluate_all(CONTRASTS_JS)

    assert [(text, ratio) for text, ratio in contrasts if ratio < 4.5] == []


def refused_upload_on(page: Page) -> Response | None:
    """The plain form sent with one file; the response of the page it lands on."""
    page.goto("/")
    page.locator("#file").set_input_files(
        [{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"Some notes."}]
    )
    with page.expect_navigation() as navigation:
        page.locator("form.upload-form").evaluate("form => form.submit()")
    return navigation.value


@pytest.mark.parametrize(
    ("path", "status"),
    [("/admin/", 403), ("/documents", 503), ("/documents/1", 503), ("/", 503)],
)
def test_error_page_passes_the_wcag_audit(
    browser: Browser, broken_server: Server, path: str, status: int
) -> None:
    """The console without a password (403), a page or an upload without a database (503)."""
    context = browser.new_context(base_url=broken_server.url)
    try:
        page = context.new_page()
        response = refused_upload_on(page) if path == "/" else page.goto(path)
        assert response is not None and response.status == status

        assert_accessible(page)
    finally:
        context.close()


# -- the keyboard alone ----------------------------------------------------------------

# Enough Tab presses to cross the dashboard: header, switch, counts, forms, a page of items.
MOST_TABS = 250
# A focus ring the browser draws (Chromium's :focus-visible outline) or one of ours.
FOCUS_RING_JS = """element => {
    const style = getComputedStyle(element);
    return element === document.activeElement && element.matches(":focus-visible")
        && style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0;
}"""


def tab_to(page: Page, target: Locator) -> None:
    """Press Tab, as a keyboard user does, until ``target`` has the focus; it must then
    show a focus ring."""
    for _ in range(MOST_TABS):
        page.keyboard.press("Tab")
        if target.evaluate("element => element === document.activeElement"):
            assert target.evaluate(FOCUS_RING_JS), f"no visible focus on {target}"
            return
    pytest.fail(f"{MOST_TABS} presses of Tab never reached {target}", pytrace=False)


def flash(page: Page) -> Locator:
    return page.locator("p.notice")


def test_an_upload_with_the_keyboard_alone(page: Page, seeded: Seeded) -> None:
    name = f"typed-{uuid.uuid4().hex[:8]}.txt"
    # File choosers intercepted from the start: turned on only as the wait below begins,
    # the interception can come after the key press, and the chooser goes unseen.
    page.on("filechooser", lambda chooser: None)
    page.goto("/")

    tab_to(page, page.locator("#file"))
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files(
        {"name": name, "mimeType": "text/plain", "buffer": f"{name}: keyboard".encode()}
    )
    tab_to(page, page.get_by_role("button", name="Upload"))
    page.keyboard.press("Enter")
    link = page.locator("ul.uploads").get_by_role("link", name=name)
    expect(link).to_be_visible()
    tab_to(page, link)
    page.keyboard.press("Enter")

    expect(page.get_by_role("heading", level=1)).to_have_text(name)
    tab_to(page, page.get_by_role("link", name="Delete…"))
    page.keyboard.press("Enter")
    tab_to(page, page.get_by_role("button", name="Delete"))
    page.keyboard.press("Enter")
    expect(flash(page)).to_contain_text(name)


def test_a_long_text_preview_scrolls_with_the_keyboard(page: Page, seeded: Seeded) -> None:
    """The preview's box is a region named by its heading, in the Tab order. Chromium
    puts a scrolling box there by itself; Safari does not (the audit's
    scrollable-region-focusable failed on it)."""
    page.goto(f"/documents/{seeded.completed[HOSTILE]}")
    preview = page.get_by_role("region", name="Text")

    tab_to(page, preview)
    page.keyboard.press("PageDown")

    expect(preview).not_to_have_js_property("scrollTop", 0)


def test_the_console_actions_with_the_keyboard_alone(page: Page, seeded: Seeded) -> None:
    name = f"typed-{uuid.uuid4().hex[:8]}"
    one = seeded.queue.item(f"{name}-one.txt", "failed")
    others = [seeded.queue.item(f"{name}-{n}.txt", "failed") for n in range(2)]
    page.goto("/admin/")

    tab_to(page, page.get_by_role("button", name="Pause processing"))
    page.keyboard.press("Enter")
    expect(flash(page)).to_contain_text("Processing paused")
    assert_accessible(page)  # the paused dashboard, its flash message and Resume button
    tab_to(page, page.get_by_role("button", name="Resume processing"))
    page.keyboard.press("Enter")
    expect(flash(page)).to_have_text("Processing resumed.")

    tab_to(page, page.get_by_label("File name"))
    page.keyboard.type(name)
    page.keyboard.press("Enter")  # sends the filter
    expect(page.locator("table.items tbody tr")).to_have_count(3)
    tab_to(page, page.get_by_role("button", name=f"Retry item {one}"))
    page.keyboard.press("Enter")
    expect(flash(page)).to_have_text(f"Retried queue item {one}.")

    tab_to(page, page.get_by_role("link", name="Retry matching items…"))
    page.keyboard.press("Enter")
    tab_to(page, page.get_by_role("button", name="Retry 2 items"))
    page.keyboard.press("Enter")
    expect(flash(page)).to_have_text("Retried 2 items.")
    assert [seeded.queue.status(item) for item in [one, *others]] == ["pending"] * 3

    tab_to(page, page.get_by_label("Purge finished items older than"))
    page.keyboard.press("Enter")  # sends the purge form: its confirmation page first
    expect(page.get_by_role("heading", level=1)).to_have_text("Purge finished items")
    tab_to(page, page.get_by_role("link", name="Back"))
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("Queue admin")
