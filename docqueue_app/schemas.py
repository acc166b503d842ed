"""Marshmallow schemas: the one place where request input is validated.

Input schemas (upload form, reprocess body, list query) are used by flask-smorest
for the API and loaded by hand by the web pages, so both answer the same way.
Output schemas describe the JSON documents and queue items of SPEC §4.
"""

from __future__ import annotations

import enum
import json
import unicodedata
from collections.abc import Mapping
from typing import Any, ClassVar

from flask import current_app
from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    pre_load,
    validate,
    validates,
)
from werkzeug.exceptions import ServiceUnavailable

# The command line and the settings share these bounds (config.py keeps them).
from .config import MAX_INTEGER, MAX_PURGE_AGE_DAYS
from .database import NOT_MIGRATED, OK, READ_ONLY, RETRY_AFTER_SECONDS, UNREACHABLE
from .states import (
    DEFAULT_PRIORITY,
    FINISHED_STATUSES,
    MAX_PRIORITY,
    MIN_PRIORITY,
    AttemptOutcome,
    DeliveryStatus,
    DocumentStatus,
    ItemStatus,
    WebhookEvent,
)
from .webhooks.destinations import CannotCheckNow, RefusedDestination, checked_callback_url

MAX_FILENAME_CHARS = 255
FALLBACK_FILENAME = "upload"
# An extension this short is kept when a long name is cut to size.
_MAX_KEPT_EXTENSION_CHARS = 16
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100
MAX_PAGE_COUNT = MAX_INTEGER
# An id in a route: ``/<int(min=1, max=...):document_id>``. Past the database's
# integers no row can exist, so the URL matches no route: a 404 whatever the back end.
ID_CONVERTER = f"int(min=1, max={MAX_INTEGER})"


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


def _finished_statuses_only(statuses: list[str]) -> None:
    """Purge refuses pending and in_progress items: they are work still to be done."""
    finished = [status.value for status in FINISHED_STATUSES]
    if not statuses:
        raise ValidationError(f"Name at least one of: {', '.join(finished)}.")
    refused = [status for status in statuses if status not in finished]
    if refused:
        raise ValidationError(
            f"Only finished items ({', '.join(finished)}) can be purged, not: {', '.join(refused)}."
        )


def priority_field() -> WholeNumber:
    return WholeNumber(
        load_default=DEFAULT_PRIORITY,
        validate=validate.Range(min=MIN_PRIORITY, max=MAX_PRIORITY),
        metadata={"description": "0..10, higher runs first (default 5)"},
    )


# -- input ----------------------------------------------------------------------


class CallbackUrl(fields.String):
    """A webhook destination (SPEC §8): an http(s) URL whose host is allowed; blank is none.

    The host is resolved here, at upload, so a refused destination is a 422 for
    the uploader rather than a delivery that fails later. Private, loopback and
    link-local hosts pass only with ``DOCQUEUE_WEBHOOK_ALLOW_PRIVATE``. The sender
    checks again when it delivers (the name may resolve elsewhere by then).
    """

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str | None:
        url = super()._deserialize(value, attr, data, **kwargs)
        try:
            return checked_callback_url(url, current_app.config["WEBHOOK_ALLOW_PRIVATE"])
        except RefusedDestination as refused:
            raise ValidationError(f"Refused: {refused}.") from None
        except CannotCheckNow as reason:
            # The server's trouble, not the uploader's: a 422 would read as final.
            raise ServiceUnavailable(
                f"The callback_url could not be checked now: {reason}. Nothing was stored; "
                "try again later.",
                retry_after=RETRY_AFTER_SECONDS,
            ) from None


class UploadFormSchema(Schema):
    """Form fields of an upload (the API's multipart body and the web form)."""

    class Meta:
        # The web form also carries its CSRF token; other stray fields are harmless.
        unknown = EXCLUDE

    # Documented here; the bytes are read from ``request.files`` by the view,
    # which answers 400 (not 422) when the field is missing or empty. Not
    # flask-smorest's ``Upload``: importing it imports all of flask-smorest, and
    # apispec, into every worker; the metadata documents it alike.
    file = fields.Raw(
        load_only=True,
        metadata={"description": "the document (required)", "type": "string", "format": "binary"},
    )
    priority = priority_field()
    callback_url = CallbackUrl(
        load_default=None,
        metadata={
            "description": "an http or https URL that receives this document's webhook events; "
            "its host must resolve to public addresses unless DOCQUEUE_WEBHOOK_ALLOW_PRIVATE"
        },
    )


class ReprocessSchema(Schema):
    priority = priority_field()


class StrictString(fields.String):
    """Only ``str``: marshmallow's ``String`` would decode bytes as UTF-8."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        return value


class ProcessorResultSchema(Schema):
    """What a processor returns (SPEC §5); anything else fails its document for good.

    Missing keys take their empty value; a key of the wrong type, or metadata
    that JSON cannot hold, is an error naming the field.
    """

    class Meta:
        unknown = EXCLUDE

    text = StrictString(load_default="")
    title = StrictString(load_default=None, allow_none=True)
    page_count = WholeNumber(
        load_default=None, allow_none=True, validate=validate.Range(min=0, max=MAX_PAGE_COUNT)
    )
    metadata = fields.Dict(keys=StrictString(), load_default=dict)

    @validates("metadata")
    def metadata_is_json(self, value: dict, **_: Any) -> None:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"not JSON: {exc}") from None


_PROCESSOR_RESULT_SCHEMA = ProcessorResultSchema()


def load_processor_result(result: Any) -> dict[str, Any]:
    """The processor's result checked; raises ``ValidationError`` saying what is wrong."""
    if not isinstance(result, Mapping):
        raise ValidationError(f"a dict is expected, not {type(result).__name__}")
    plain = _plain_processor_result(result)
    return plain if plain is not None else _PROCESSOR_RESULT_SCHEMA.load(result)


def _plain_processor_result(result: Mapping) -> dict[str, Any] | None:
    """A well-formed result as the schema would load it, checked without marshmallow.

    The worker's hot path (marshmallow costs a document ~0.5 ms). None for
    anything else, which the schema then loads or explains.
    """
    text, title = result.get("text", ""), result.get("title")
    page_count, metadata = result.get("page_count"), result.get("metadata", {})
    if type(text) is not str or not (title is None or type(title) is str):
        return None
    if not (page_count is None or (type(page_count) is int and 0 <= page_count <= MAX_PAGE_COUNT)):
        return None
    if type(metadata) is not dict or not all(type(key) is str for key in metadata):
        return None
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return {"text": text, "title": title, "page_count": page_count, "metadata": metadata}


class PaginationQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    # Decided: up to the largest INTEGER, a page past the end is an empty page (its
    # OFFSET, (page - 1) * per_page, fits in 64 bits); a larger page number is a 422,
    # not an OFFSET that overflows the 64-bit integers of either back end (a 500).
    page = WholeNumber(load_default=1, validate=validate.Range(min=1, max=MAX_INTEGER))
    per_page = WholeNumber(
        load_default=DEFAULT_PER_PAGE, validate=validate.Range(min=1, max=MAX_PER_PAGE)
    )


class FilteredListQuerySchema(PaginationQuerySchema):
    """A list query with optional filters (named in ``filters``); blank means no filter."""

    filters: ClassVar[tuple[str, ...]] = ("status",)

    @pre_load
    def blank_filter_means_any(self, data: Mapping[str, Any], **_: Any) -> Mapping[str, Any]:
        # A filter form's "all" option sends ?status= : no filter, not an unknown status.
        blank = {key for key in self.filters if data.get(key) == ""}
        if blank:
            return {key: data[key] for key in data if key not in blank}
        return data


def status_filter(statuses: type[enum.StrEnum]) -> fields.String:
    return fields.String(
        load_default=None, validate=validate.OneOf([status.value for status in statuses])
    )


class DocumentListQuerySchema(FilteredListQuerySchema):
    status = status_filter(DocumentStatus)


class SearchText(fields.String):
    """A page's search box: NUL dropped, blanks around it stripped, cut to ``max_chars``.

    No stored text holds NUL (file names lose every control character, see
    ``clean_filename``; errors and texts lose NUL when written) and PostgreSQL
    refuses it even as a query parameter: dropped, the search finds what the
    stored text became. A search left blank is None: no search.
    """

    def __init__(self, *, max_chars: int | None = None, **kwargs: Any) -> None:
        super().__init__(load_default=None, **kwargs)
        self.max_chars = max_chars

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str | None:
        text = super()._deserialize(value, attr, data, **kwargs).replace("\x00", "").strip()
        return text[: self.max_chars] or None


class DocumentPageQuerySchema(DocumentListQuerySchema):
    """The document list page: the API's list query plus its search by file name."""

    # Longer is cut: no file name is longer.
    q = SearchText(max_chars=MAX_FILENAME_CHARS)


class QueueItemListQuerySchema(FilteredListQuerySchema):
    filters = ("status", "document_id")

    status = status_filter(ItemStatus)
    document_id = WholeNumber(load_default=None, validate=validate.Range(min=1, max=MAX_INTEGER))


class AdminItemFilterSchema(QueueItemListQuerySchema):
    """The admin console's item filter (query string or bulk-action form)."""

    filters = ("status", "document_id", "filename", "error")

    filename = SearchText()
    error = SearchText()


def purge_age_field(**kwargs: Any) -> fields.Float:
    """Days since an item finished; capped so the cutoff date stays a date."""
    return fields.Float(
        required=True, validate=validate.Range(min=0, max=MAX_PURGE_AGE_DAYS), **kwargs
    )


class AdminPurgeSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    days = purge_age_field()


class PurgeSchema(Schema):
    """What to purge: finished items of these statuses, finished over N days ago."""

    older_than_days = purge_age_field(
        metadata={"description": "finished at least this many days ago (0: any time)"}
    )
    statuses = fields.List(
        fields.String(),
        load_default=lambda: [status.value for status in FINISHED_STATUSES],
        # Checked as a whole so the error reads {"statuses": [...]}, not per index.
        validate=_finished_statuses_only,
        metadata={"description": "default: completed, failed, cancelled"},
    )


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
    metadata = fields.Dict(
        attribute="extracted_metadata",
        allow_none=True,
        metadata={"description": "what the processor found; null before the first success"},
    )
    callback_url = fields.String(
        allow_none=True, metadata={"description": "receives this document's webhook events"}
    )
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


class QueueItemPageSchema(PageSchema):
    items = fields.List(fields.Nested(QueueItemSchema))


class DeliverySchema(Schema):
    """One webhook delivery of a document (SPEC §8): one event for one destination."""

    id = fields.String(
        attribute="delivery_id",
        metadata={"description": "the X-Docqueue-Delivery header and body id of every attempt"},
    )
    event = fields.String(metadata={"enum": [event.value for event in WebhookEvent]})
    url = fields.String()
    status = fields.String(metadata={"enum": [status.value for status in DeliveryStatus]})
    attempts = fields.Integer()
    last_status_code = fields.Integer(
        allow_none=True, metadata={"description": "the receiver's last HTTP status"}
    )
    last_error = fields.String(allow_none=True)
    created_at = fields.DateTime()
    delivered_at = fields.DateTime(allow_none=True)


class DeliveryListSchema(Schema):
    items = fields.List(fields.Nested(DeliverySchema))


class AttemptSchema(Schema):
    """One attempt at a queue item; ``outcome`` and ``finished_at`` are null while it runs."""

    attempt = fields.Integer()
    worker = fields.String(allow_none=True)
    started_at = fields.DateTime()
    finished_at = fields.DateTime(allow_none=True)
    duration_seconds = fields.Float(allow_none=True)
    outcome = fields.String(
        allow_none=True, metadata={"enum": [outcome.value for outcome in AttemptOutcome]}
    )
    error = fields.String(allow_none=True)


class QueueItemDetailSchema(QueueItemSchema):
    history = fields.List(fields.Nested(AttemptSchema), metadata={"description": "oldest first"})


class PurgeResultSchema(Schema):
    deleted = fields.Integer(metadata={"description": "queue items deleted"})


class PauseStateSchema(Schema):
    paused = fields.Boolean()


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
    # Every state database_state() reports: a client may switch on any of them.
    database = fields.String(metadata={"enum": [OK, UNREACHABLE, READ_ONLY, NOT_MIGRATED]})


class ReadinessSchema(HealthSchema):
    scheduler = fields.String(metadata={"enum": ["ok", "disabled", "stale"]})
