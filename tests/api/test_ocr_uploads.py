"""Scans and images through the API (SPEC §4, §5): taken and read by OCR while it is on."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.api import assert_json_error, document_count, run_queue
from tests.helpers import upload
from tests.processing.scanned_pages import (
    bomb_png,
    image_bytes,
    multi_frame_tiff,
    render_page,
)

PHRASE = "Every invoice must be paid within thirty days."


def scan() -> bytes:
    page = render_page(PHRASE, dpi=150, width_inches=5.5, margin_inches=0.4)
    return image_bytes(page, "PNG")


def test_a_png_upload_is_queued_then_completed_with_its_text(
    app: Flask, client: FlaskClient
) -> None:
    response = upload(client, scan(), "scan.png")

    assert response.status_code == 202
    assert response.get_json()["content_type"] == "image/png"
    assert run_queue(app)["completed"] == 1
    document = client.get(response.headers["Location"]).get_json()
    assert document["status"] == "completed"
    assert document["page_count"] == 1
    assert document["metadata"]["ocr_pages"] == 1
    assert document["metadata"]["ocr_engine"].startswith("tesseract ")
    text = client.get(f"{response.headers['Location']}/text").get_data(as_text=True)
    assert PHRASE in " ".join(text.split())
    assert document["word_count"] == len(text.split())


@pytest.mark.parametrize(
    ("content", "filename", "content_type"),
    [
        (lambda: image_bytes(render_page("A photo", dpi=72), "JPEG"), "photo.jpg", "image/jpeg"),
        (lambda: multi_frame_tiff([render_page("Sheet", dpi=72)] * 2), "fax.tif", "image/tiff"),
    ],
    ids=["jpeg", "tiff"],
)
def test_jpeg_and_tiff_uploads_are_taken(
    client: FlaskClient, content: Callable[[], bytes], filename: str, content_type: str
) -> None:
    response = upload(client, content(), filename)

    assert response.status_code == 202
    assert response.get_json()["content_type"] == content_type


def test_with_ocr_off_a_png_is_415_and_nothing_is_stored(make_app: Callable[..., Flask]) -> None:
    client = make_app(OCR="off").test_client()

    body = assert_json_error(upload(client, scan(), "scan.png"), 415, "Unsupported Media Type")

    assert "scan.png is an image (image/png)" in body["message"]
    assert "DOCQUEUE_OCR=off" in body["message"]
    assert document_count(client) == 0


def test_an_image_bomb_fails_for_good_while_the_server_stays_healthy(
    make_app: Callable[..., Flask],
) -> None:
    # As in production: the document is processed in a sandbox under the memory cap.
    app = make_app(PROCESS_ISOLATION="subprocess")
    client = app.test_client()
    response = upload(client, bomb_png(), "bomb.png")  # 30,000 x 30,000 pixels, ~500 KB
    assert response.status_code == 202

    outcomes: list[dict[str, int]] = []
    worker = threading.Thread(target=lambda: outcomes.append(run_queue(app)))
    worker.start()
    health = [client.get("/healthz").status_code]
    while worker.is_alive():
        health.append(client.get("/healthz").status_code)
        worker.join(0.05)

    assert outcomes == [{"processed": 1, "completed": 0, "failed": 1, "retried": 0}]
    assert set(health) == {200}
    document = client.get(response.headers["Location"]).get_json()
    assert document["status"] == "failed"
    assert "30000 x 30000 pixels" in document["error"]
    assert "too large to read by OCR" in document["error"]
    assert document["queue_item"]["status"] == "failed"  # not retried: it never could succeed
    assert document["queue_item"]["attempts"] == 1
