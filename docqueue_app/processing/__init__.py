"""Document processing: type detection, text extraction, and isolated execution.

The queue calls ``run_processor``; the built-in processor is ``extract``.

``extract`` and the detection names are imported on first use (a module
``__getattr__``), and each extractor imports its parser (PDFium, lxml,
selectolax, charset-normalizer, Pillow) with the first document of its type, and
the OCR engine (Tesseract) with the first page that needs it: the web app, a
worker whose documents run in child processes and commands such as
``queue stats`` start without any of them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import (
    PermanentProcessingError,
    ProcessingCancelled,
    TransientProcessingError,
    UnsupportedContentType,
)
from .isolation import run_processor

if TYPE_CHECKING:
    from .detection import (
        IMAGE_CONTENT_TYPES,
        SUPPORTED_CONTENT_TYPES,
        TYPE_NAMES,
        detect_content_type,
    )
    from .extraction import extract

# Public name -> the submodule that defines it.
_DEFERRED = {
    "IMAGE_CONTENT_TYPES": "detection",
    "SUPPORTED_CONTENT_TYPES": "detection",
    "TYPE_NAMES": "detection",
    "detect_content_type": "detection",
    "extract": "extraction",
}

__all__ = [
    "IMAGE_CONTENT_TYPES",
    "SUPPORTED_CONTENT_TYPES",
    "TYPE_NAMES",
    "PermanentProcessingError",
    "ProcessingCancelled",
    "TransientProcessingError",
    "UnsupportedContentType",
    "detect_content_type",
    "extract",
    "run_processor",
]


def __getattr__(name: str) -> Any:
    if name not in _DEFERRED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_DEFERRED[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value
