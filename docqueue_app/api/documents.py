"""/api/documents: upload, list, read, reprocess and delete documents."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from flask import Response, request, send_file, url_for
from flask.views import MethodView
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import BadRequest, Conflict, NotFound, PreconditionFailed

from ..documents import (
    DocumentPage,
    DocumentView,
    document_deliveries,
    find_document,
    list_documents,
    original_bytes,
    show_document,
)
from ..queue import ChangedSince, DocumentNotFound, DocumentQueueService
from ..schemas import (
    ID_CONVERTER,
    DeliveryListSchema,
    DocumentListQuerySchema,
    DocumentPageSchema,
    DocumentSchema,
    ReprocessSchema,
    UploadFormSchema,
    UploadResultSchema,
)
from ..security import refuse_cross_site_writes, require_api_token
from ..states import Operation
from ..uploads import check_upload, store_uploads, upload_view
from .blueprint import API_TOKEN, ApiBlueprint

blp = ApiBlueprint(
    "documents",
    __name__,
    url_prefix="/api/documents",
    description="Upload documents, follow their processing, read the results.",
    security=API_TOKEN,
    guard_errors={401: "DOCQUEUE_API_TOKEN is set and the bearer token is missing or wrong"},
)
# The bearer token is no credential a browser resends by itself, but while no token
# is set, any page a user visits could upload, reprocess or delete through the user's
# browser (on an intranet the attacker cannot reach): cross-site writes are refused
# here too. Nothing legitimate is lost: without CORS, no other site's page could
# use this API anyway.
blp.before_request(refuse_cross_site_writes)
blp.before_request(require_api_token)
CROSS_SITE = "Sent by a page of another site"
NO_SUCH_DOCUMENT = "No such document"
PRECONDITION_FAILED = (
    "If-Match names an entity tag (documents have none; '*' is any), "
    "or the document changed after If-Unmodified-Since"
)
# A document has a few deliveries (one per event and destination); the bound only
# keeps a document reprocessed thousands of times from answering megabytes.
MAX_LISTED_DELIVERIES = 100


@blp.route("", methods=["POST"])
# An instance, not the class: webargs would build a schema for every request.
@blp.arguments(UploadFormSchema(), location="form", content_type="multipart/form-data")
@blp.response(202, UploadResultSchema, description="Stored and queued; Location names it.")
@blp.alt_response(200, schema=UploadResultSchema, description="Same bytes as an existing document")
@blp.error_response(400, "The file is missing or empty, or more than one was sent")
@blp.error_response(403, CROSS_SITE)
@blp.error_response(413, "The file is over DOCQUEUE_MAX_UPLOAD_MB")
@blp.error_response(415, "Not a supported type")
def upload_document(form: dict[str, Any]) -> tuple[DocumentView, int, dict[str, str]]:
    checked = check_upload(_the_one_file(), form["priority"], form["callback_url"])
    [submission] = store_uploads([checked])
    view = upload_view(submission)
    if not submission.created:
        return view, 200, {}
    return view, 202, {"Location": url_for(".document", document_id=view.id)}


def _the_one_file() -> FileStorage | None:
    """The upload's ``file`` part; several are refused, none is dropped unseen."""
    files = request.files.getlist("file")
    if len(files) > 1:
        raise BadRequest(
            f"The multipart field 'file' came {len(files)} times: send one file per request."
        )
    return files[0] if files else None


@blp.route("", methods=["GET"])
@blp.arguments(DocumentListQuerySchema, location="query")
@blp.response(200, DocumentPageSchema)
def list_documents_page(query: dict[str, Any]) -> DocumentPage:
    return list_documents(query["status"], query["page"], query["per_page"], with_metadata=True)


# One rule for GET and DELETE: with a rule per method, werkzeug would answer an id
# past the converter's max with 405 rather than 404.
@blp.route(f"/<{ID_CONVERTER}:document_id>", endpoint="document")
class DocumentResource(MethodView):
    @blp.response(200, DocumentSchema)
    @blp.error_response(404, NO_SUCH_DOCUMENT)
    def get(self, document_id: int) -> DocumentView:
        return show_document(document_id)

    @blp.response(204, description="Deleted with its bytes and queue items")
    @blp.error_response(403, CROSS_SITE)
    @blp.error_response(412, PRECONDITION_FAILED)
    @blp.error_response(404, NO_SUCH_DOCUMENT)
    def delete(self, document_id: int) -> None:
        since = check_preconditions(document_id)
        with precondition_judged_with_the_change(document_id):
            deleted = DocumentQueueService().delete_document(document_id, since)
        if not deleted:
            raise NotFound(f"Document {document_id} does not exist.")


@blp.route(f"/<{ID_CONVERTER}:document_id>/text", methods=["GET"])
@blp.alt_response(
    200,
    schema={"type": "string"},
    content_type="text/plain",
    description="The latest extracted text",
    success=True,
)
@blp.error_response(404, NO_SUCH_DOCUMENT)
@blp.error_response(409, "No text has been extracted yet")
def get_document_text(document_id: int) -> Response:
    document = find_document(document_id)
    if document.text is None:
        raise Conflict(
            f"Document {document_id} has no extracted text yet (status: {document.status})."
        )
    return Response(document.text, mimetype="text/plain")


@blp.route(f"/<{ID_CONVERTER}:document_id>/file", methods=["GET"])
@blp.alt_response(
    200,
    schema={"type": "string", "format": "binary"},
    # The bytes as uploaded, sent with their detected content_type: any media type.
    content_type="*/*",
    description="The original bytes, as an attachment, with the document's content_type",
    success=True,
)
@blp.error_response(404, NO_SUCH_DOCUMENT)
def get_document_file(document_id: int) -> Response:
    document = find_document(document_id)
    response = send_file(
        io.BytesIO(original_bytes(document_id)),
        mimetype=document.content_type,
        as_attachment=True,
        download_name=document.filename,
        last_modified=document.created_at,
    )
    # Exactly the detected type: no charset is claimed for bytes never decoded.
    response.headers["Content-Type"] = document.content_type
    # Opened directly anyway, the file runs no script and reaches no origin.
    response.headers["Content-Security-Policy"] = "sandbox"
    return response


@blp.route(f"/<{ID_CONVERTER}:document_id>/reprocess", methods=["POST"])
@blp.arguments(ReprocessSchema, location="json", required=False)
@blp.response(202, DocumentSchema, description="Queued again; the document is pending.")
@blp.error_response(400, "The body is not JSON")
@blp.error_response(403, CROSS_SITE)
@blp.error_response(412, PRECONDITION_FAILED)
@blp.error_response(404, NO_SUCH_DOCUMENT)
def reprocess_document(body: dict[str, Any], document_id: int) -> DocumentView:
    since = check_preconditions(document_id)
    try:
        with precondition_judged_with_the_change(document_id):
            queued = DocumentQueueService().enqueue_and_show(
                document_id, Operation.REPROCESS, body["priority"], since
            )
    except DocumentNotFound:
        raise NotFound(f"Document {document_id} does not exist.") from None
    return DocumentView(*queued)


def check_preconditions(document_id: int) -> datetime | None:
    """412 for a change the client made conditional on a state the document is not in;
    the If-Unmodified-Since time the change itself must still hold to (None: none).

    Documents carry no entity tag, so ``If-Match`` holds only as ``*`` (the
    document exists); ``If-Unmodified-Since`` holds while ``updated_at`` (to the
    second, as HTTP dates go) is not later. Evaluated only for a document that
    exists: an unknown one stays 404 (RFC 9110, 13.2.1). The service judges that
    time again in the change's transaction, the document locked: a worker's outcome
    may land between this look and the change.
    """
    if_match, since = request.if_match, request.if_unmodified_since
    if not if_match and since is None:
        return None
    updated_at = find_document(document_id).updated_at.replace(microsecond=0)
    # Beside If-Match, If-Unmodified-Since is ignored (RFC 9110, 13.1.4).
    holds = if_match.star_tag if if_match else updated_at <= since
    if not holds:
        raise _precondition_failed(document_id)
    return None if if_match else since


@contextmanager
def precondition_judged_with_the_change(document_id: int) -> Iterator[None]:
    """The service's ``ChangedSince`` as the 412 the look before it would have given."""
    try:
        yield
    except ChangedSince:
        raise _precondition_failed(document_id) from None


def _precondition_failed(document_id: int) -> PreconditionFailed:
    return PreconditionFailed(
        f"Document {document_id}: the precondition failed; nothing was changed."
    )


@blp.route(f"/<{ID_CONVERTER}:document_id>/deliveries", methods=["GET"])
@blp.response(
    200,
    DeliveryListSchema,
    description=f"The document's webhook deliveries, newest first (the newest "
    f"{MAX_LISTED_DELIVERIES}): one per event and destination, with how its attempts went.",
)
@blp.error_response(404, NO_SUCH_DOCUMENT)
def list_document_deliveries(document_id: int) -> dict[str, Any]:
    return {"items": document_deliveries(document_id, MAX_LISTED_DELIVERIES)}
