"""POST /api/documents: what an uploader gets back, and what is refused before storing."""

from __future__ import annotations

import hashlib
import io
import unicodedata

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from docqueue_app.schemas import clean_filename
from tests.api import assert_json_error, document_count, run_queue
from tests.helpers import upload

UNSUPPORTED_MESSAGE = (
    "not a supported type (PDF, DOCX, HTML, text, Markdown, CSV, JSON, PNG, JPEG, TIFF)"
)
# A GIF: an image format docqueue does not read (PNG, JPEG and TIFF go to OCR).
GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04"
ELF = b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4


def raw_multipart_upload(client: FlaskClient, disposition: str, data: bytes):
    """A multipart body written by hand, for filenames the test client cannot encode."""
    boundary = "docqueue-test-boundary"
    body = (
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; {disposition}\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return client.post(
        "/api/documents",
        data=body,
        content_type=f"multipart/form-data; boundary={boundary}",
    )


# -- accepted uploads -------------------------------------------------------------


def test_upload_is_accepted_as_pending_with_its_location(client: FlaskClient) -> None:
    data = b"hello docqueue"
    response = upload(client, data, "note.txt")

    assert response.status_code == 202
    document = response.get_json()
    assert response.headers["Location"] == f"/api/documents/{document['id']}"
    assert document["status"] == "pending"
    assert document["filename"] == "note.txt"
    assert document["content_type"] == "text/plain"
    assert document["size"] == len(data)
    assert document["sha256"] == hashlib.sha256(data).hexdigest()
    assert document["duplicate"] is False
    assert document["error"] is None
    assert document["created_at"].endswith("+00:00")
    item = document["queue_item"]
    assert item["operation"] == "process"
    assert item["status"] == "pending"
    assert item["priority"] == 5
    assert item["attempts"] == 0
    assert item["run_at"].endswith("+00:00")
    assert client.get(response.headers["Location"]).get_json()["id"] == document["id"]


def test_upload_keeps_the_requested_priority(client: FlaskClient) -> None:
    response = upload(client, priority=9)

    assert response.status_code == 202
    assert response.get_json()["queue_item"]["priority"] == 9


def test_same_bytes_again_return_the_existing_document_and_queue_nothing(
    client: FlaskClient,
) -> None:
    first = upload(client, b"same bytes", "first.txt").get_json()

    again = upload(client, b"same bytes", "second.txt")

    assert again.status_code == 200
    body = again.get_json()
    assert body["duplicate"] is True
    assert body["id"] == first["id"]
    assert body["filename"] == "first.txt"
    assert "Location" not in again.headers
    assert client.get("/api/queue/stats").get_json()["total"] == 1


def test_uploads_are_counted_for_metrics(client: FlaskClient) -> None:
    def counted(result: str) -> float:
        return REGISTRY.get_sample_value("docqueue_uploads_total", {"result": result}) or 0.0

    accepted, duplicate = counted("accepted"), counted("duplicate")
    upload(client, b"counted once")
    upload(client, b"counted once")

    assert counted("accepted") == accepted + 1
    assert counted("duplicate") == duplicate + 1


def test_uploaded_document_is_processed_to_completion(app: Flask, client: FlaskClient) -> None:
    document_id = upload(client, b"three little words", "words.txt").get_json()["id"]

    result = run_queue(app)

    assert result == {"processed": 1, "completed": 1, "failed": 0, "retried": 0}
    document = client.get(f"/api/documents/{document_id}").get_json()
    assert document["status"] == "completed"
    assert document["word_count"] == 3
    assert document["char_count"] == len("three little words")
    assert document["processed_at"].endswith("+00:00")
    assert document["queue_item"]["status"] == "completed"
    assert client.get(f"/api/documents/{document_id}/text").text.strip() == "three little words"


# -- refused uploads --------------------------------------------------------------


@pytest.mark.parametrize("priority", ["11", "-1", "high", "5.5"])
def test_invalid_priority_is_422_and_stores_nothing(client: FlaskClient, priority: str) -> None:
    response = upload(client, priority=priority)

    body = assert_json_error(response, 422, "Unprocessable Entity")
    assert list(body["errors"]) == ["form"]
    assert list(body["errors"]["form"]) == ["priority"]
    assert document_count(client) == 0


def test_missing_file_field_is_400(client: FlaskClient) -> None:
    response = client.post(
        "/api/documents", data={"priority": "5"}, content_type="multipart/form-data"
    )

    body = assert_json_error(response, 400, "Bad Request")
    assert "file" in body["message"]


def test_two_files_in_one_upload_are_400_and_neither_is_silently_dropped(
    client: FlaskClient,
) -> None:
    # curl -F file=@a -F file=@b: the API stores one file per request; taking the
    # first and answering 202 would leave the caller believing both were stored.
    response = client.post(
        "/api/documents",
        data={"file": [(io.BytesIO(b"first"), "a.txt"), (io.BytesIO(b"second"), "b.txt")]},
        content_type="multipart/form-data",
    )

    body = assert_json_error(response, 400, "Bad Request")
    assert "one file" in body["message"]
    assert document_count(client) == 0


def test_empty_file_is_400(client: FlaskClient) -> None:
    body = assert_json_error(upload(client, b"", "empty.txt"), 400, "Bad Request")

    assert "empty" in body["message"]
    assert document_count(client) == 0


def test_file_over_the_upload_limit_is_413(make_app) -> None:
    client = make_app(MAX_UPLOAD_MB=0.001).test_client()  # 1048 bytes

    body = assert_json_error(
        upload(client, b"x" * 2000, "big.txt"), 413, "Request Entity Too Large"
    )

    assert "0.001 MB" in body["message"]
    assert document_count(client) == 0


def test_file_exactly_at_the_upload_limit_is_accepted(make_app) -> None:
    client = make_app(MAX_UPLOAD_MB=0.001).test_client()

    assert upload(client, b"x" * 1048, "limit.txt").status_code == 202


def test_body_over_the_request_limit_is_a_json_413(make_app) -> None:
    # Past the limit plus the multipart allowance werkzeug refuses while parsing.
    client = make_app(MAX_UPLOAD_MB=0.001).test_client()

    response = upload(client, b"x" * (1024 * 1024 + 4096), "huge.txt")

    body = assert_json_error(response, 413, "Request Entity Too Large")
    # werkzeug's own "The data value transmitted exceeds the capacity limit." named no limit
    assert body["message"] == (
        "The request was over 1 MB, so it was not read: the file may have up to "
        "0.001 MB. Nothing was stored."
    )
    assert document_count(client) == 0


@pytest.mark.parametrize(("data", "filename"), [(GIF, "photo.gif"), (ELF, "program.txt")])
def test_unsupported_type_is_415(client: FlaskClient, data: bytes, filename: str) -> None:
    body = assert_json_error(upload(client, data, filename), 415, "Unsupported Media Type")

    assert UNSUPPORTED_MESSAGE in body["message"]
    assert document_count(client) == 0


# -- filenames --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uploaded", "stored"),
    [
        ("../../etc/passwd", "passwd"),
        ("отчёт.pdf", "отчёт.pdf"),
        ("日本.docx.txt", "日本.docx.txt"),
    ],
)
def test_upload_stores_the_name_without_its_folder(
    client: FlaskClient, uploaded: str, stored: str
) -> None:
    response = upload(client, b"plain text", uploaded)

    assert response.status_code == 202
    assert response.get_json()["filename"] == stored


def test_control_characters_are_dropped_and_the_file_still_downloads(
    client: FlaskClient,
) -> None:
    # Browsers cannot send CR/LF in a filename, but an RFC 5987 filename* can.
    response = raw_multipart_upload(
        client, "filename*=UTF-8''evil%0D%0ASet-Cookie%3A%20a%3D1.txt", b"header injection"
    )

    assert response.status_code == 202
    document = response.get_json()
    assert document["filename"] == "evilSet-Cookie: a=1.txt"
    download = client.get(f"/api/documents/{document['id']}/file")
    assert download.status_code == 200
    assert "Set-Cookie" not in download.headers
    assert download.data == b"header injection"


@pytest.mark.parametrize(
    ("name", "cleaned"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\report.txt", "report.txt"),
        ("отчёт.pdf", "отчёт.pdf"),
        ("a\r\nb\tc\x00d\u200be.txt", "abcde.txt"),
        ("e\u0301te\u0301.txt", "été.txt"),
        ("folder/", "upload"),
        ("..", "upload"),
        ("", "upload"),
        (None, "upload"),
        ("  spaced.txt  ", "spaced.txt"),
    ],
)
def test_clean_filename(name: str | None, cleaned: str) -> None:
    assert clean_filename(name) == cleaned


def test_clean_filename_cuts_long_names_and_keeps_the_extension() -> None:
    cleaned = clean_filename("a" * 300 + ".pdf")

    assert len(cleaned) == 255
    assert cleaned.endswith("a.pdf")


def test_clean_filename_is_nfc() -> None:
    cleaned = clean_filename("Cafe\u0301.md")

    assert cleaned == unicodedata.normalize("NFC", "Café.md") and len(cleaned) == 7


def test_upload_from_a_form_with_extra_fields_still_works(client: FlaskClient) -> None:
    response = client.post(
        "/api/documents",
        data={"file": (io.BytesIO(b"with extras"), "x.txt"), "comment": "hello"},
        content_type="multipart/form-data",
    )

    assert response.status_code == 202
