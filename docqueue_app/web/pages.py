"""Pages for people: upload documents, list them, follow one until it is processed.

Uploads go through the same checks as the API (``uploads.py``); a rejected
upload re-renders the form with the reason and the matching status code. With
JavaScript, the upload page sends each file to the API itself (``upload.js``);
this form is what works without it. Reprocess and delete are forms too (CSRF
tokens checked by Flask-WTF), and write through ``DocumentQueueService``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flask import (
    Blueprint,
    Response,
    flash,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_wtf.csrf import CSRFError
from marshmallow import Schema, ValidationError
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    NotFound,
    UnprocessableEntity,
)

from ..documents import (
    document_attempts,
    find_document,
    list_documents,
    show_document,
    text_preview,
)
from ..processing import TYPE_NAMES
from ..queue import DocumentNotFound, DocumentQueueService
from ..queue.submissions import NewDocument, Submission
from ..schemas import (
    ID_CONVERTER,
    DocumentPageQuerySchema,
    DocumentSchema,
    UploadFormSchema,
    describe_validation_errors,
)
from ..states import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY, DocumentStatus, Operation
from ..uploads import (
    check_upload,
    refused_unread,
    request_and_file_limits_mb,
    store_uploads,
)

blueprint = Blueprint("web", __name__)

PREVIEW_CHARS = 2000
# Until one of these, the detail page follows the document live.
LIVE_STATUSES = (DocumentStatus.PENDING, DocumentStatus.PROCESSING)
# No inline script or style anywhere: injected markup could not run even if it got in.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Why a form's CSRF token no longer holds, in words for the person who sent it.
FORM_EXPIRED = (
    "this page was loaded more than an hour ago, or the server has restarted since, "
    "so its form had expired."
)
_STATUS_FIELDS = ("id", "status", "error", "updated_at")
# Metadata the processors find (processing/pdf.py, docx.py, text.py, html.py), in the
# order and with the labels the detail page shows them; any other key follows.
METADATA_LABELS = {
    "author": "Author",
    "subject": "Subject",
    "description": "Description",
    "keywords": "Keywords",
    "category": "Category",
    "language": "Language",
    "creator": "Created with",
    "producer": "Produced by",
    "creation_date": "Created",
    "modification_date": "Modified",
    "last_modified_by": "Last modified by",
    "encoding": "Encoding",
    "pdf_version": "PDF version",
    "pages_extracted": "Pages extracted",
    "unreadable_pages": "Unreadable pages",
    "text_truncated": "Text truncated",
}


@blueprint.after_request
def add_page_security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@blueprint.app_template_filter("type_label")
def format_type_label(content_type: str) -> str:
    """The short name the list shows (the detail page shows the full media type)."""
    name = TYPE_NAMES.get(content_type)
    return content_type if name is None else name[0].upper() + name[1:]


@blueprint.app_template_filter("filesize")
def format_file_size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


@blueprint.errorhandler(HTTPException)
def render_error_page(error: HTTPException) -> tuple[str, int, list[tuple[str, str]]]:
    """Errors as pages; a refused upload shows the form again, with the reason.

    An upload is refused here whether the view raised it (400, 415, 422, its own
    413) or werkzeug or the CSRF check did while reading the body.
    """
    # Keep headers such as Allow (405); the body is this page, not werkzeug's.
    headers = [(name, value) for name, value in error.get_headers() if name != "Content-Type"]
    if request.endpoint == "web.upload_files":
        page = _render_upload_form(_upload_refusal(error), _priority_sent())
    elif isinstance(error, CSRFError):
        page = render_template(
            "web/expired.html",
            error=error,
            form_expired=FORM_EXPIRED,
            reload_url=_page_the_form_was_on(),
        )
    else:
        page = render_template("web/error.html", error=error)
    return page, error.code or 500, headers


def _upload_refusal(error: HTTPException) -> str | None:
    if isinstance(error, CSRFError):
        return f"Nothing was uploaded: {FORM_EXPIRED} Choose the files again and upload."
    if refused_unread(error):
        # File names unknown: one file too large, or several within the limit that add up.
        together, each = request_and_file_limits_mb()
        return (
            f"Nothing was uploaded: the files sent were over {together:g} MB together. "
            f"Each file may have up to {each:g} MB; send fewer files at once."
        )
    return error.description


def _page_the_form_was_on() -> str:
    """The page to reload after a stale form: the one it was sent from, when it is ours."""
    referrer = urlsplit(request.referrer or "")
    own = urlsplit(request.host_url)
    if (referrer.scheme, referrer.netloc) == (own.scheme, own.netloc) and referrer.path:
        return urlunsplit(("", "", referrer.path, referrer.query, ""))
    return url_for("admin.dashboard" if request.blueprint == "admin" else ".upload_form")


def render_unrouted_error_page(error: HTTPException) -> Response:
    """The error page of a request that matched no route (an unknown path, a wrong method).

    Such a request belongs to no blueprint, so neither ``render_error_page`` nor
    the pages' ``after_request`` ran for it: both are applied here.
    """
    return add_page_security_headers(make_response(render_error_page(error)))


# -- upload -----------------------------------------------------------------------


@blueprint.get("/")
def upload_form() -> str:
    return _render_upload_form()


@blueprint.post("/")
def upload_files() -> Response:
    form = load_or_422(UploadFormSchema(), request.form)
    stored = store_uploads(_checked_uploads(form["priority"]))
    _flash_duplicates(stored)
    if len(stored) == 1:
        document_id = stored[0].document.id
        return redirect(url_for(".document_detail", document_id=document_id), 303)
    return redirect(url_for(".document_list"), 303)


def _checked_uploads(priority: int) -> list[NewDocument]:
    """Every chosen file, all checked before any is stored."""
    # A file input left empty still sends a part, with no filename and no bytes.
    files = [storage for storage in request.files.getlist("file") if storage.filename]
    if not files:
        raise BadRequest("Choose at least one file to upload.")
    return [check_upload(storage, priority) for storage in files]


def _flash_duplicates(stored: list[Submission]) -> None:
    for submission in stored:
        if not submission.created:
            filename = submission.document.filename
            flash(f"{filename} was uploaded before; this is the existing document.")


def _render_upload_form(error: str | None = None, priority: int = DEFAULT_PRIORITY) -> str:
    return render_template(
        "web/upload.html",
        error=error,
        priorities=range(MIN_PRIORITY, MAX_PRIORITY + 1),
        selected_priority=priority,
    )


def _priority_sent() -> int:
    """The priority a refused upload carried, offered again; the default when unreadable."""
    try:
        return UploadFormSchema(only=("priority",)).load(request.form)["priority"]
    except (HTTPException, ValidationError):  # a body too large to read; a tampered value
        return DEFAULT_PRIORITY


# -- documents ------------------------------------------------------------------


@blueprint.get("/documents")
def document_list() -> str:
    query = load_or_422(DocumentPageQuerySchema(), request.args)
    page = list_documents(query["status"], query["page"], query["per_page"], query["q"])
    return render_template(
        "web/documents.html",
        page=page,
        status=query["status"],
        search=query["q"] or "",
        statuses=[status.value for status in DocumentStatus],
        page_count=max(1, -(-page.total // page.per_page)),
    )


@blueprint.get(f"/documents/<{ID_CONVERTER}:document_id>")
def document_detail(document_id: int) -> str:
    view = show_document(document_id)
    return render_template(
        "web/document.html",
        document=view,
        live=view.status in LIVE_STATUSES,
        preview=text_preview(document_id, PREVIEW_CHARS),
        preview_chars=PREVIEW_CHARS,
        metadata=describe_metadata(view.extracted_metadata),
        attempts=document_attempts(document_id),
    )


def describe_metadata(metadata: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The processor's metadata as (label, value) rows: known keys first, empty ones left out."""
    if not metadata:
        return []
    known = [key for key in METADATA_LABELS if key in metadata]
    others = sorted(key for key in metadata if key not in METADATA_LABELS)
    rows = []
    for key in known + others:
        value = metadata[key]
        if value is None or value == "" or value == []:
            continue
        label = METADATA_LABELS.get(key, key.replace("_", " ").capitalize())
        rows.append((label, _metadata_value(value)))
    return rows


def _metadata_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(part) for part in value)
    return str(value)


@blueprint.post(f"/documents/<{ID_CONVERTER}:document_id>/reprocess")
def reprocess_document(document_id: int) -> Response:
    try:
        DocumentQueueService().enqueue(document_id, Operation.REPROCESS, DEFAULT_PRIORITY)
    except DocumentNotFound:
        raise NotFound(f"Document {document_id} does not exist.") from None
    flash("Queued for processing again.")
    return redirect(url_for(".document_detail", document_id=document_id), 303)


@blueprint.get(f"/documents/<{ID_CONVERTER}:document_id>/delete")
def confirm_delete(document_id: int) -> str:
    """Deleting asks first, on a page of its own: no script needed to confirm."""
    return render_template("web/delete.html", document=find_document(document_id))


@blueprint.post(f"/documents/<{ID_CONVERTER}:document_id>/delete")
def delete_document(document_id: int) -> Response:
    filename = find_document(document_id).filename
    if not DocumentQueueService().delete_document(document_id):
        raise NotFound(f"Document {document_id} does not exist.")
    flash(f"Deleted {filename}.")
    return redirect(url_for(".document_list"), 303)


@blueprint.get(f"/documents/<{ID_CONVERTER}:document_id>/status.json")
def document_status(document_id: int) -> Response:
    """What the detail page polls; outside /api so it works whether or not API_TOKEN is set."""
    document = find_document(document_id)
    return jsonify(DocumentSchema(only=_STATUS_FIELDS).dump(document))


def load_or_422(schema: Schema, data: MultiDict[str, Any]) -> dict[str, Any]:
    try:
        return schema.load(data)
    except ValidationError as error:
        raise UnprocessableEntity(describe_validation_errors(error.messages)) from None
