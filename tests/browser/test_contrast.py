"""Non-text contrast (WCAG 2.1 1.4.11) and visible focus (2.4.7) on every page, measured
in chromium: axe-core checks neither.

Each form control's boundary (its border, or its background where that is filled)
must stand at 3:1 against the background around it, and whatever the keyboard
focuses (Tab, so :focus-visible applies) must show an outline or a box-shadow at 3:1
against the background it is drawn on. Colours are read with getComputedStyle, and
backgrounds with some transparency are laid over those behind them; background images
are not looked at (no page puts a control on one). A control chromium draws itself
(``appearance: auto``: the selects, the inputs, the Upload button) is drawn in #767676,
4.27:1 on the page, whatever colour its computed border says. An ``auto`` outline is
measured in its computed colour (chromium's #101010, 1.21:1 on the dark header):
chromium adds a thin white ring that shows there, but that is chromium's own; Firefox's
ring is its blue accent (#0060df by default), 2.8:1 on the header.

The pages look the same on either back end (only a count's "≈ estimate" differs, which
is text), so the module runs on SQLite alone. None of the stylesheets has a
``prefers-color-scheme: dark`` variant (Swagger UI's neither), so there is no dark look
to measure; Playwright's ``color_scheme="dark"`` draws the very same pages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.admin import Queue
from tests.browser.conftest import admin_tab
from tests.delivery_rows import record_delivery
from tests.e2e.server import Server

with contextlib.suppress(ImportError):
    from playwright.sync_api import Browser, Page, expect

PASSWORD = "browser-contrast"
# More stops than any page has; a page that never lets go of the focus fails.
MOST_TAB_STOPS = 300

# Colours as [r, g, b, a]; a background is what its ancestors' backgrounds add up to.
COLOURS_JS = """
const rgba = text => {
    const numbers = text.match(/[\\d.]+/g).map(Number);
    return numbers.length < 4 ? [...numbers, 1] : numbers;
};
const over = (top, bottom) =>
    [0, 1, 2].map(i => top[i] * top[3] + bottom[i] * (1 - top[3])).concat(1);
const behind = element => {
    const layers = [];
    for (let node = element; node; node = node.parentElement) {
        const colour = rgba(getComputedStyle(node).backgroundColor);
        if (colour[3] > 0) layers.push(colour);
        if (colour[3] >= 1) break;
    }
    return layers.reduceRight((below, layer) => over(layer, below), [255, 255, 255, 1]);
};
const luminance = ([r, g, b]) => {
    const linear = c => (c /= 255) <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b);
};
const contrast = (colour, background) => {
    const [a, b] = [luminance(over(colour, background)), luminance(background)];
    return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
};
const hex = colour => "#" + colour.slice(0, 3)
    .map(c => Math.round(c).toString(16).padStart(2, "0")).join("");
const describe = element => {
    const name = (element.getAttribute("aria-label") || element.textContent || element.value || "")
        .trim().replace(/\\s+/g, " ").slice(0, 40);
    return `<${element.tagName.toLowerCase()}${element.id ? "#" + element.id : ""}` +
        `${element.type ? " type=" + element.type : ""}> "${name}"`;
};
"""

# Each visible control's boundary: the better of its background and its border (the
# border's weakest side) against the background around it. A file input's boundary is
# its "Choose files" button.
BOUNDARIES_JS = (
    "() => {"
    + COLOURS_JS
    + """
    const boundary = (style, around) => {
        const filled = contrast(rgba(style.backgroundColor), around);
        const sides = ["Top", "Right", "Bottom", "Left"].filter(side =>
            parseFloat(style[`border${side}Width`]) > 0 &&
            !["none", "hidden"].includes(style[`border${side}Style`]));
        const border = sides.length === 0 ? 1 : Math.min(...sides.map(side =>
            contrast(rgba(style[`border${side}Color`]), around)));
        return [Math.max(filled, border),
                `border ${sides.length ? style.borderTopColor : "none"}, ` +
                `background ${style.backgroundColor} on ${hex(around)}`];
    };
    const controls = document.querySelectorAll(
        "input:not([type=hidden]), select, textarea, button, a.button");
    return [...controls].filter(element => element.getClientRects().length > 0)
        .map(element => {
            const around = behind(element.parentElement);
            const style = element.type === "file"
                ? getComputedStyle(element, "::file-selector-button")
                : getComputedStyle(element);
            const [ratio, how] = boundary(style, around);
            return [describe(element), Math.round(ratio * 100) / 100, how];
        });
}"""
)

# The focused element's indicator: the best of its outline and its box-shadows, each
# against the background it is drawn on (outside the element, or inside it when the
# outline is inset or the shadow is).
FOCUS_JS = (
    "() => {"
    + COLOURS_JS
    + """
    const element = document.activeElement;
    if (!element || element === document.body) return null;
    const style = getComputedStyle(element);
    const outside = behind(element.parentElement);
    const inside = behind(element);
    const found = [[1, "no outline or box-shadow"]];
    if (style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0) {
        const on = parseFloat(style.outlineOffset) < 0 ? inside : outside;
        found.push([contrast(rgba(style.outlineColor), on),
                    `outline ${style.outlineStyle} ${style.outlineWidth} ` +
                    `${style.outlineColor} on ${hex(on)}`]);
    }
    const shadows = style.boxShadow === "none" ? [] : style.boxShadow.split(/,(?![^(]*\\))/);
    for (const shadow of shadows) {
        const colour = shadow.match(/rgba?\\([^)]*\\)/);
        const lengths = shadow.replace(/rgba?\\([^)]*\\)/, "").match(/-?[\\d.]+px/g) || [];
        const spread = lengths.slice(2).reduce((sum, length) => sum + parseFloat(length), 0);
        if (!colour || spread <= 0) continue;
        const on = shadow.includes("inset") ? inside : outside;
        found.push([contrast(rgba(colour[0]), on), `box-shadow ${shadow.trim()} on ${hex(on)}`]);
    }
    const [ratio, how] = found.reduce((best, one) => one[0] > best[0] ? one : best);
    return [describe(element), Math.round(ratio * 100) / 100, how];
}"""
)


@dataclass
class Seeded:
    """A document and an item in each state a page shows controls for."""

    completed_document: int
    failed_document: int
    failed_item: int
    pending_item: int


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("contrast") / "docqueue.db"


@pytest.fixture(scope="module")
def server_settings(database: Path) -> dict[str, str]:
    """conftest's server with the admin login on and no scheduler: items keep their states."""
    return {
        "DATABASE_URL": f"sqlite:///{database}",
        "DOCQUEUE_SCHEDULER_ENABLED": "false",
        "DOCQUEUE_ADMIN_PASSWORD": PASSWORD,
    }


@pytest.fixture(scope="module")
def seeded(queue: Queue) -> Seeded:
    completed = queue.item("quarterly-report.md", "completed")
    failed = queue.item("scan.pdf", "failed", error="PDF is encrypted", retries=1)
    pending = queue.item("notes.txt")
    record_delivery(queue.app, queue.document_id(completed), last_error="HTTP 503")
    return Seeded(
        completed_document=queue.document_id(completed),
        failed_document=queue.document_id(failed),
        failed_item=failed,
        pending_item=pending,
    )


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    with admin_tab(browser, server.url, PASSWORD, viewport={"width": 1280, "height": 900}) as tab:
        yield tab


# Every page a user or an operator reaches, by the path it has once seeded. The admin
# console has no login page of its own: the browser asks for the Basic credentials.
PAGES = {
    "upload_form": lambda seeded: "/",
    "document_list": lambda seeded: "/documents",
    "document_completed": lambda seeded: f"/documents/{seeded.completed_document}",
    "document_failed": lambda seeded: f"/documents/{seeded.failed_document}",
    "document_delete": lambda seeded: f"/documents/{seeded.completed_document}/delete",
    "not_found": lambda seeded: "/documents/999999999",
    "dashboard": lambda seeded: "/admin/",
    "queue_item_failed": lambda seeded: f"/admin/items/{seeded.failed_item}",
    "queue_item_pending": lambda seeded: f"/admin/items/{seeded.pending_item}",
    "confirm_bulk_retry": lambda seeded: "/admin/bulk/retry?status=failed",
    "confirm_purge": lambda seeded: "/admin/purge?days=0",
    "deliveries": lambda seeded: "/admin/deliveries",
}
# /api/docs is Swagger UI's: its buttons are the text or the icon in a bordered bar of
# an operation or a schema, which identifies them without a boundary of their own, so
# only its focus is measured (and the header it shares with the other pages).
API_DOCS = "api_docs"
# Swagger UI draws /api/docs from openapi.json after the page has loaded.
SWAGGER_MS = 10_000


def visit(page: Page, seeded: Seeded, name: str) -> None:
    if name == API_DOCS:
        page.goto("/api/docs")
        expect(page.locator(".opblock").first).to_be_visible(timeout=SWAGGER_MS)
        return
    page.goto(PAGES[name](seeded))
    expect(page.locator("main")).to_be_visible()


def tab_through(page: Page) -> list[tuple[str, float, str]]:
    """The focus indicator of each element Tab reaches, from the top of the page to the
    last stop (then the focus leaves the page: the body is active again)."""
    indicators = []
    for _ in range(MOST_TAB_STOPS):
        page.keyboard.press("Tab")
        focused = page.evaluate(FOCUS_JS)
        if focused is None:
            return indicators
        indicators.append(tuple(focused))
    pytest.fail(f"{page.url}: Tab never left the page in {MOST_TAB_STOPS} stops")


def assert_at_least_3_to_1(url: str, measured: list[tuple[str, float, str]]) -> None:
    """Each measured element stands at 3:1 or more; else the failure lists those short of
    it, each with its ratio and the colours it was measured from."""
    faint = [f"{element}: {ratio}:1 ({how})" for element, ratio, how in measured if ratio < 3]
    if faint:
        pytest.fail(f"{url}: {len(faint)} short of 3:1\n" + "\n".join(faint), pytrace=False)


@pytest.mark.parametrize("name", PAGES)
def test_every_control_has_a_boundary_that_stands_out(
    page: Page, seeded: Seeded, name: str
) -> None:
    visit(page, seeded, name)

    boundaries = page.evaluate(BOUNDARIES_JS)

    assert_at_least_3_to_1(page.url, boundaries)


@pytest.mark.parametrize("name", [*PAGES, API_DOCS])
def test_keyboard_focus_is_shown_on_everything_tab_reaches(
    page: Page, seeded: Seeded, name: str
) -> None:
    visit(page, seeded, name)

    indicators = tab_through(page)

    assert indicators, f"{page.url}: Tab reached nothing"
    assert_at_least_3_to_1(page.url, indicators)
