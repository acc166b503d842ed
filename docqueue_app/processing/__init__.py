"""Document processing: type detection, text extraction, and isolated execution.

The queue calls ``run_processor``; the built-in processor is ``extract``.
"""

from .detection import SUPPORTED_CONTENT_TYPES, detect_content_type
from .errors import (
    PermanentProcessingError,
    ProcessingCancelled,
    TransientProcessingError,
    UnsupportedContentType,
)
from .extraction import extract
from .isolation import run_processor

__all__ = [
    "SUPPORTED_CONTENT_TYPES",
    "PermanentProcessingError",
    "ProcessingCancelled",
    "TransientProcessingError",
    "UnsupportedContentType",
    "detect_content_type",
    "extract",
    "run_processor",
]
