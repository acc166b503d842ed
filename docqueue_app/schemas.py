"""Marshmallow schemas: the one place where request input is validated.

Input schemas (upload form, reprocess body, list query) are used by flask-smorest
for the API and loaded by hand by the web pages, so both answer the same way.
Output schemas describe the JSON documents and queue items of SPEC §4.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

from flask_smorest.fields import Upload
from marshmallow import EXCLUDE, Schema, fields, pre_load, validate

from .models import DocumentStatus, ItemStatus
from .queue.service import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY

MAX_FILENAME_CHARS = 255
FALLBACK_FILENAME = "upload"
# An extension this short is kept when a long name is cut to size.
_MAX_KEPT_EXTENSION_CHARS = 16
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100


def clean_filename(name: str | None) -> str:
    """The uploaded name as shown and offered for download; never used as a path.

    Drops any folder part (``/`` or ``\\``), NFC-normalizes, removes Unicode
    control and format characters (category C*: CR/LF would break the
    Content-Disposition header) and cuts to 255 characters, keeping a short
    extension. An empty result becomes ``"upload"``.
    """
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(char for char in base if not unicodedata.category(char).startswith("C"))
    base = base.strip()
    if base in ("", ".", ".."):
        return FALLBACK_FILENAME
    return _shorten(base, MAX_FILENAME_CHARS)


def _shorten(name: str, limit: int) -> str:
    if len(name) <= limit:
        return name
    stem, dot, extension = name.rpartition(".")
    if stem and len(extension) <= _MAX_KEPT_EXTENSION_CHARS:
        return stem[: limit - len(extension) - 1] + dot + extension
    return name[:limit]


def describe_validation_errors(errors: Any) -> str:
    """One line for people from marshmallow's messages (per location, per field)."""
    if isinstance(errors, dict):
        return " ".join(_describe_entry(key, value) for key, value in errors.items())
    if isinstance(errors, list | tuple):
        return " ".join(describe_validation_errors(error) for error in errors)
    return str(errors)


def _describe_entry(key: Any, value: Any) -> str:
    text = describe_validation_errors(value)
    # Locations ("json", "query", "form") and "_schema" name no field.
    return text if key in _UNNAMED_ERROR_KEYS else f"{key}: {text}"


_UNNAMED_ERROR_KEYS = frozenset({"json", "query", "form", "files", "_schema"})


class WholeNumber(fields.Integer):
    """An integer, given as a number or a string of digits.

    marshmallow's ``Integer`` would truncate ``5.5`` to ``5``; a fraction is an
    error here, and so is a boolean.
    """

    def _validated(self, value: Any) -> int:
        if isinstance(value, float) and not value.is_integer():
            raise self.make_error("invalid")
        return super()._validated(value)


def priority_field() -> WholeNumber:
    return WholeNumber(
        load_default=DEFAULT_PRIORITY,
        validate=validate.Range(min=MIN_PRIORITY, max=MAX_PRIORITY),
        metadata={"description": "0..10, higher runs first (default 5)"},
    )


# -- input ----------------------------------------------------------------------


class UploadFormSchema(Schema):
    """Form fields of an upload (the API's multipart body and the web form)."""

    class Meta:
        # The web form also carries its CSRF token; other stray fields are harmless.
        unknown = EXCLUDE

    # Documented here; the bytes are read from ``request.files`` by the view,
    # which answers 400 (not 422) when the field is missing or empty.
    file = Upload(load_only=True, metadata={"description": "the document (required)"})
    priority = priority_field()


class ReprocessSchema(Schema):
    priority = priority_field()


class PaginationQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    page = WholeNumber(load_default=1, validate=validate.Range(min=1))
    per_page = WholeNumber(
        load_default=DEFAULT_PER_PAGE, validate=validate.Range(min=1, max=MAX_PER_PAGE)
    )


class DocumentListQuerySchema(PaginationQuerySchema):
    status = fields.String(
        load_default=None, validate=validate.OneOf([status.value for status in DocumentStatus])
    )

    @pre_load
    def blank_status_means_any(self, data: Mapping[str, Any], **_: Any) -> Mapping[str, Any]:
        # A filter form's "all" option sends ?status= : no filter, not an unknown status.
        if data.get("status") == "":
            return {key: data[key] for key in data if key != "status"}
        return data


# -- output ---------------------------------------------------------------------


class LatestItemSchema(Schema):
    """The document's latest queue item, as embedded in a document."""

    id = fields.Integer()
    operation = fields.String()
    status = fields.String(metadata={"enum": [status.value for status in ItemStatus]})
    priority = fields.Integer()
    attempts = fields.Integer()
    max_attempts = fields.Integer()
    run_at = fields.DateTime()
    last_error = fields.String(allow_none=True)


class QueueItemSchema(LatestItemSchema):
    document_id = fields.Integer()
    locked_by = fields.String(allow_none=True)
    lease_expires_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)


class DocumentSchema(Schema):
    id = fields.Integer()
    filename = fields.String()
    content_type = fields.String()
    size = fields.Integer(metadata={"description": "bytes"})
    sha256 = fields.String()
    status = fields.String(metadata={"enum": [status.value for status in DocumentStatus]})
    error = fields.String(allow_none=True)
    title = fields.String(allow_none=True)
    page_count = fields.Integer(allow_none=True)
    word_count = fields.Integer(allow_none=True)
    char_count = fields.Integer(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    processed_at = fields.DateTime(allow_none=True)
    queue_item = fields.Nested(LatestItemSchema, allow_none=True)


class UploadResultSchema(DocumentSchema):
    duplicate = fields.Boolean(
        metadata={"description": "true when the same bytes were uploaded before"}
    )


class PageSchema(Schema):
    """The envelope of every list: one page of ``items`` and the total count."""

    page = fields.Integer()
    per_page = fields.Integer()
    total = fields.Integer()


class DocumentPageSchema(PageSchema):
    items = fields.List(fields.Nested(DocumentSchema))


class QueueStatsSchema(Schema):
    pending = fields.Integer()
    in_progress = fields.Integer()
    completed = fields.Integer()
    failed = fields.Integer()
    cancelled = fields.Integer()
    total = fields.Integer()
    oldest_pending_age_seconds = fields.Float(allow_none=True)
    paused = fields.Boolean()


class ProcessQueueResultSchema(Schema):
    processed = fields.Integer()
    completed = fields.Integer()
    failed = fields.Integer()
    retried = fields.Integer()


class HealthSchema(Schema):
    status = fields.String(metadata={"enum": ["ok", "error"]})
    database = fields.String(metadata={"enum": ["ok", "unreachable"]})


class ReadinessSchema(HealthSchema):
    scheduler = fields.String(metadata={"enum": ["ok", "disabled", "stale"]})
