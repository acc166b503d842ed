"""The app's settings the built-in extractor obeys (DOCQUEUE_OCR), wherever it runs.

A processor keeps SPEC §5's three arguments, and a sandbox child has no Flask app
to read a config from. So ``run_processor`` sets these options around each call,
in its own thread or in the sandbox (the job carries them), and the extractor
reads them here. A call made outside ``run_processor`` (a test, a script calling
``extract``) gets the defaults, which are the config's defaults.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

OCR_AUTO = "auto"  # images and PDF pages without a text layer are read by OCR
OCR_OFF = "off"  # no OCR: images are refused at upload, scanned PDF pages give no text
OCR_MODES = (OCR_AUTO, OCR_OFF)


@dataclass(frozen=True)
class ProcessingOptions:
    ocr: str = OCR_AUTO

    def __post_init__(self) -> None:
        if self.ocr not in OCR_MODES:
            raise ValueError(f"ocr must be one of {OCR_MODES}, not {self.ocr!r}")

    @property
    def ocr_enabled(self) -> bool:
        return self.ocr != OCR_OFF


DEFAULT_OPTIONS = ProcessingOptions()
# A context variable, not a global: worker threads run documents side by side.
_current: ContextVar[ProcessingOptions] = ContextVar("docqueue_processing_options")


def current_options() -> ProcessingOptions:
    """The options of the document being processed in this thread."""
    return _current.get(DEFAULT_OPTIONS)


@contextmanager
def processing_options(options: ProcessingOptions) -> Iterator[None]:
    """Process documents with ``options`` inside the block (this thread only)."""
    token = _current.set(options)
    try:
        yield
    finally:
        _current.reset(token)
