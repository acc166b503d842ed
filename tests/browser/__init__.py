"""Real-browser tests of the pages: Playwright driving Debian's chromium.

The server these tests start runs ``slow_when_marked`` (``DOCQUEUE_PROCESSOR=
tests.browser:slow_when_marked``): the built-in extractor, slowed down for a
document that contains ``SLOW_MARKER``, so that a test can watch the detail page
follow a document that is certainly still pending or processing when it opens.
"""

from __future__ import annotations

import time

from docqueue_app.processing import extract

SLOW_MARKER = "browser test: process me slowly"
# Over twice the detail page's 1.5 s poll period: a poll sees "processing" for sure.
SLOW_SECONDS = 3.5


def slow_when_marked(content: bytes, filename: str, content_type: str) -> dict:
    if SLOW_MARKER.encode() in content:
        time.sleep(SLOW_SECONDS)
    return extract(content, filename, content_type)
