"""Fixtures for the browser tests: one docqueue server and one chromium per module.

The browser is Debian's chromium (``apt-get install chromium``), driven by the
``playwright`` package; no browser is ever downloaded. Without either the tests
are skipped, except under ``CI=true``, where that fails them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from docqueue_app import create_app
from tests.admin import Queue
from tests.e2e.server import Server, run_cli

try:
    from playwright.sync_api import Browser, ConsoleMessage, Dialog, Error, Page, sync_playwright
except ImportError as exc:  # reported by require_browser
    PLAYWRIGHT_IMPORT_ERROR: str | None = str(exc)
else:
    PLAYWRIGHT_IMPORT_ERROR = None

CHROMIUM = Path("/usr/bin/chromium")
# Root needs --no-sandbox; the rest keeps chromium from reaching out to its update,
# sync and other background services, which this closed network refuses.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The WCAG contrast of each element's text against its own background, or against the
# nearest ancestor's that has one (axe-core's color-contrast rule, short of images).
CONTRASTS_JS = """elements => {
    const rgb = text => text.match(/[\\d.]+/g).map(Number);
    const luminance = ([r, g, b]) => {
        const linear = c => (c /= 255) <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
        return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b);
    };
    const background = element => {
        for (let node = element; node; node = node.parentElement) {
            const colour = rgb(getComputedStyle(node).backgroundColor);
            if (colour.length < 4 || colour[3] > 0) return colour;
        }
        return [255, 255, 255];
    };
    return elements.map(element => {
        const a = luminance(rgb(getComputedStyle(element).color));
        const b = luminance(background(element));
        const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
        return [element.textContent.trim(), Math.round(ratio * 100) / 100];
    });
}"""

# Playwright's own waits (clicks, navigations); expect() calls give their own timeouts.
ACTION_TIMEOUT_MS = 15_000


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (install Debian's chromium: apt-get install chromium)"
    if PLAYWRIGHT_IMPORT_ERROR is not None:
        return (
            "the playwright package is not installed (pip install -e '.[dev]'): "
            f"{PLAYWRIGHT_IMPORT_ERROR}"
        )
    return None


@pytest.fixture(scope="module", autouse=True)
def require_browser() -> None:
    reason = missing_browser()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests cannot run under CI=true: {reason}", pytrace=False)
    pytest.skip(f"browser tests skipped: {reason}")


@pytest.fixture(scope="module")
def server_settings() -> dict[str, str]:
    """Settings a module's server adds to (or overrides in) the default ones."""
    return {}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, server_settings: dict[str, str]
) -> Iterator[Server]:
    """gunicorn on a fresh SQLite database, scheduler on, documents in child processes."""
    folder = tmp_path_factory.mktemp("browser-server")
    env = {
        "DATABASE_URL": f"sqlite:///{folder / 'docqueue.db'}",
        "DOCQUEUE_SECRET_KEY": "browser-tests",
        "DOCQUEUE_SCHEDULER_ENABLED": "true",
        "DOCQUEUE_POLL_INTERVAL": "0.2",
        "DOCQUEUE_PROCESS_ISOLATION": "subprocess",
        "DOCQUEUE_PROCESSOR": "tests.browser:slow_when_marked",
        **server_settings,
    }
    migrated = run_cli(env, "db", "upgrade")
    assert migrated.returncode == 0, migrated.stderr
    # The workers' metric files go here rather than into a new folder under /tmp.
    env["PROMETHEUS_MULTIPROC_DIR"] = str(folder / "metrics")
    with running(Server(env, log_path=folder / "server.log")) as server:
        yield server


@contextmanager
def running(server: Server) -> Iterator[Server]:
    """``server`` started, and stopped when the block ends."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    """A fresh tab in its own context (no cookies shared), relative URLs on the server."""
    context = browser.new_context(base_url=server.url)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


@contextmanager
def admin_tab(browser: Browser, url: str, password: str, **options: Any) -> Iterator[Page]:
    """A tab in its own context, logged in as admin (the browser answers the Basic challenge)."""
    context = browser.new_context(
        base_url=url, http_credentials={"username": "admin", "password": password}, **options
    )
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="module")
def queue(server: Server, database: Path) -> Queue:
    """Builds items in the SQLite database of the module's server, as its workers would.

    For modules that define ``database``; their ``server`` has migrated it.
    """
    app = create_app(
        {
            "DATABASE_URL": f"sqlite:///{database}",
            "SCHEDULER_ENABLED": False,
            "PROCESS_ISOLATION": "none",
            "SECRET_KEY": "seeding",
        }
    )
    return Queue(app)


@dataclass
class PageEvents:
    """What a page reported: dialogs opened, and console errors or uncaught exceptions
    (a Content-Security-Policy violation is a console error)."""

    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def page_events(page: Page) -> PageEvents:
    events = PageEvents()

    def on_dialog(dialog: Dialog) -> None:
        events.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            events.errors.append(f"console error at {message.location}: {message.text}")

    def on_page_error(error: Error) -> None:
        events.errors.append(f"uncaught {error.name}: {error.message}")

    page.on("dialog", on_dialog)
    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    return events
