"""Accepting an upload: the checks and the storing shared by the API and the web form.

An upload is checked whole (present, not empty, within the size limit, of a
supported type) before anything is stored, and then stored in one transaction
by ``DocumentQueueService.submit_document``. Rejections are raised as HTTP
errors (400, 413, 415) whose description is the message shown to the user.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from .config import upload_limit_bytes
from .metrics import record_upload
from .models import Document
from .processing import UnsupportedContentType, detect_content_type
from .queue import DocumentQueueService
from .schemas import clean_filename

SUPPORTED_TYPES_LABEL = "PDF, DOCX, HTML, text, Markdown, CSV, JSON"


@dataclass(frozen=True)
class CheckedUpload:
    filename: str
    content: bytes
    content_type: str


def check_upload(storage: FileStorage | None) -> CheckedUpload:
    """Read and vet one uploaded file; raises 400, 413 or 415 with a message for the user."""
    if storage is None:
        raise BadRequest("The multipart field 'file' is missing.")
    filename = clean_filename(storage.filename)
    content = _read_within_limit(storage, filename)
    if not content:
        raise BadRequest(f"{filename} is empty.")
    try:
        content_type = detect_content_type(content, filename)
    except UnsupportedContentType as exc:
        raise UnsupportedMediaType(
            f"{filename} is {exc or 'of an unknown kind'}; "
            f"it is not a supported type ({SUPPORTED_TYPES_LABEL})."
        ) from None
    return CheckedUpload(filename, content, content_type)


def store_upload(upload: CheckedUpload, priority: int) -> tuple[Document, bool]:
    """Store a checked upload and queue it; ``(document, created)`` as the service returns."""
    document, created = DocumentQueueService().submit_document(
        upload.filename, upload.content, upload.content_type, priority
    )
    record_upload(duplicate=not created)
    return document, created


def _read_within_limit(storage: FileStorage, filename: str) -> bytes:
    limit = upload_limit_bytes(current_app.config)
    # One byte past the limit is enough to know it is too large.
    content = storage.stream.read(limit + 1)
    if len(content) > limit:
        raise RequestEntityTooLarge(
            f"{filename} is larger than the upload limit of "
            f"{current_app.config['MAX_UPLOAD_MB']:g} MB."
        )
    return content
