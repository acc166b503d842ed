"""Accepting an upload: the checks and the storing shared by the API, the web form and
``docqueue import``.

Every file of an upload is checked whole (present, not empty, within the size
limit, of a supported type) before anything is stored, and then all are stored
in one transaction by ``DocumentQueueService.submit``. Rejections are raised as
HTTP errors (400, 413, 415) whose description is the message shown to the user
(``docqueue import`` prints it as the reason a file was refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO

from flask import current_app, request
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from .config import upload_limit_bytes
from .documents import DocumentView
from .metrics import record_upload
from .processing import (
    IMAGE_CONTENT_TYPES,
    SUPPORTED_CONTENT_TYPES,
    TYPE_NAMES,
    UnsupportedContentType,
    detect_content_type,
)
from .processing.options import OCR_OFF
from .queue import DocumentQueueService
from .queue.submissions import NewDocument, Submission
from .schemas import clean_filename


def supported_types_label(with_images: bool) -> str:
    """The types this server takes, for the 415 message (images are read by OCR: taken
    only while it is on)."""
    return ", ".join(
        TYPE_NAMES[content_type]
        for content_type in SUPPORTED_CONTENT_TYPES
        if with_images or content_type not in IMAGE_CONTENT_TYPES
    )


def check_upload(
    storage: FileStorage | None, priority: int, callback_url: str | None = None
) -> NewDocument:
    """Read and vet one uploaded file; raises 400, 413 or 415 with a message for the user.

    ``callback_url`` was checked by the form's schema already.
    """
    if storage is None:
        if "file" in request.form:  # curl -F "file=<path" rather than "file=@path"
            raise BadRequest(
                "The multipart field 'file' came as text, without a filename: send the "
                "file as a file part (curl -F file=@path)."
            )
        raise BadRequest("The multipart field 'file' is missing.")
    return check_file(storage.filename, storage.stream, priority, callback_url)


def check_file(
    name: str | None, source: IO[bytes], priority: int, callback_url: str | None = None
) -> NewDocument:
    """Read and vet one file, whichever way it came in (an upload, ``docqueue import``).

    ``name`` is cleaned as SPEC §4 says (it is never used as a path), ``source``
    is read up to one byte past the size limit, and the type is detected from the
    bytes. Raises 400 (empty), 413 (too large) or 415 (unsupported type), each
    with a message that names the file and says why.
    """
    filename = clean_filename(name)
    content = _read_within_limit(source, filename)
    if not content:
        raise BadRequest(f"{filename} is empty.")
    ocr_on = current_app.config["OCR"] != OCR_OFF
    try:
        content_type = detect_content_type(content, filename)
    except UnsupportedContentType as exc:
        raise UnsupportedMediaType(
            f"{filename} is {exc or 'of an unknown kind'}; "
            f"it is not a supported type ({supported_types_label(ocr_on)})."
        ) from None
    if content_type in IMAGE_CONTENT_TYPES and not ocr_on:
        raise UnsupportedMediaType(
            f"{filename} is an image ({content_type}), which only OCR reads, and OCR is off "
            f"on this server (DOCQUEUE_OCR=off); it is not a supported type "
            f"({supported_types_label(with_images=False)})."
        )
    return NewDocument(filename, content, content_type, priority, callback_url)


def store_uploads(uploads: Sequence[NewDocument]) -> list[Submission]:
    """Store checked uploads and queue them, all in one transaction."""
    submissions = DocumentQueueService().submit(uploads)
    for submission in submissions:
        record_upload(duplicate=not submission.created)
    return submissions


def upload_view(submission: Submission) -> DocumentView:
    """What an upload answers: a new document with the item just queued, or the existing one.

    Either is shown as the upload wrote or found it, without reading it again: a
    duplicate's document may be deleted by now.
    """
    return DocumentView(submission.document, submission.item, duplicate=not submission.created)


def refused_unread(error: Exception) -> bool:
    """True for werkzeug's 413 of a body past the request limit (MAX_CONTENT_LENGTH):
    refused before a byte of it was read, with a description that names no limit."""
    return (
        isinstance(error, RequestEntityTooLarge)
        and error.description == RequestEntityTooLarge.description
    )


def request_and_file_limits_mb() -> tuple[float, float]:
    """The most a request may carry (the files and the form around them) and a file."""
    config = current_app.config
    return config["MAX_CONTENT_LENGTH"] / (1024 * 1024), config["MAX_UPLOAD_MB"]


def _read_within_limit(source: IO[bytes], filename: str) -> bytes:
    limit = upload_limit_bytes(current_app.config)
    # One byte past the limit is enough to know it is too large.
    content = source.read(limit + 1)
    if len(content) > limit:
        raise RequestEntityTooLarge(
            f"{filename} is larger than the upload limit of "
            f"{current_app.config['MAX_UPLOAD_MB']:g} MB."
        )
    return content
