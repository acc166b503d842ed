"""Accepting an upload: the checks and the storing shared by the API and the web form.

Every file of an upload is checked whole (present, not empty, within the size
limit, of a supported type) before anything is stored, and then all are stored
in one transaction by ``DocumentQueueService.submit``. Rejections are raised as
HTTP errors (400, 413, 415) whose description is the message shown to the user.
"""

from __future__ import annotations

from collections.abc import Sequence

from flask import current_app
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from .config import upload_limit_bytes
from .documents import DocumentView, document_view
from .metrics import record_upload
from .processing import UnsupportedContentType, detect_content_type
from .queue import DocumentQueueService
from .queue.submissions import NewDocument, Submission
from .schemas import clean_filename

SUPPORTED_TYPES_LABEL = "PDF, DOCX, HTML, text, Markdown, CSV, JSON"


def check_upload(
    storage: FileStorage | None, priority: int, callback_url: str | None = None
) -> NewDocument:
    """Read and vet one uploaded file; raises 400, 413 or 415 with a message for the user.

    ``callback_url`` was checked by the form's schema already.
    """
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
    return NewDocument(filename, content, content_type, priority, callback_url)


def store_uploads(uploads: Sequence[NewDocument]) -> list[Submission]:
    """Store checked uploads and queue them, all in one transaction."""
    submissions = DocumentQueueService().submit(uploads)
    for submission in submissions:
        record_upload(duplicate=not submission.created)
    return submissions


def upload_view(submission: Submission) -> DocumentView:
    """What an upload answers: a new document with the item just queued, or the existing one.

    A new document is shown as it was written, without reading it back.
    """
    if submission.created:
        return DocumentView(submission.document, submission.item)
    return document_view(submission.document, duplicate=True)


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
