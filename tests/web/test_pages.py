"""The HTML pages: upload form, list, detail; escaping, CSRF and live status."""

from __future__ import annotations

import io
import re

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.api import document_count, run_queue
from tests.helpers import upload

HOSTILE_NAME = "<img src=x onerror=alert(1)>.txt"
HOSTILE_TITLE = "<script>alert(1)</script>"


def submit_form(
    client: FlaskClient, files: list[tuple[bytes, str]], priority: str = "5", **fields: str
) -> TestResponse:
    data = {"file": [(io.BytesIO(content), name) for content, name in files]}
    return client.post(
        "/",
        data={**data, "priority": priority, **fields},
        content_type="multipart/form-data",
    )


def csrf_token_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "the form has no CSRF token field"
    return match.group(1)


# -- upload form ------------------------------------------------------------------


def test_upload_form_renders_with_csrf_token_and_priorities(client: FlaskClient) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.text
    assert csrf_token_of(page)
    assert 'type="file" multiple' in page
    assert re.findall(r'<option value="(\d+)"', page) == [str(n) for n in range(11)]
    assert '<option value="5" selected>' in page


def test_pages_forbid_inline_scripts(client: FlaskClient) -> None:
    response = client.get("/")

    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert re.search(r"<script(?![^>]*\bsrc=)", response.text) is None


def test_one_file_redirects_to_its_page(client: FlaskClient) -> None:
    response = submit_form(client, [(b"from the browser", "page.txt")], priority="8")

    assert response.status_code == 303
    document = client.get("/api/documents").get_json()["items"][0]
    assert response.headers["Location"] == f"/documents/{document['id']}"
    assert document["filename"] == "page.txt"
    assert document["queue_item"]["priority"] == 8


def test_several_files_redirect_to_the_list(client: FlaskClient) -> None:
    response = submit_form(client, [(b"first file", "a.txt"), (b"second file", "b.md")])

    assert response.status_code == 303
    assert response.headers["Location"] == "/documents"
    assert document_count(client) == 2


def test_a_duplicate_upload_says_so_on_the_existing_page(client: FlaskClient) -> None:
    first = upload(client, b"twice", "first.txt").get_json()

    response = submit_form(client, [(b"twice", "again.txt")])
    page = client.get(response.headers["Location"]).text

    assert response.headers["Location"] == f"/documents/{first['id']}"
    assert "uploaded before" in page


@pytest.mark.parametrize(
    ("files", "status", "message"),
    [
        ([(b"GIF89a\x01\x00\x01\x00", "photo.gif")], 415, "not a supported type"),
        ([(b"", "empty.txt")], 400, "empty"),
        ([(b"fine text", "ok.txt"), (b"\x7fELF\x02\x01\x01\x00", "x.bin")], 415, "x.bin"),
    ],
)
def test_a_rejected_upload_shows_the_form_again_and_stores_nothing(
    client: FlaskClient, files: list[tuple[bytes, str]], status: int, message: str
) -> None:
    response = submit_form(client, files)

    assert response.status_code == status
    assert 'role="alert"' in response.text
    assert message in response.text
    assert 'type="file"' in response.text
    assert document_count(client) == 0


def test_no_file_chosen_is_400(client: FlaskClient) -> None:
    # What a browser sends for a file input left empty.
    response = submit_form(client, [(b"", "")])

    assert response.status_code == 400
    assert "Choose at least one file" in response.text


def test_too_large_upload_shows_the_limit(make_app) -> None:
    client = make_app(MAX_UPLOAD_MB=0.001).test_client()

    response = submit_form(client, [(b"x" * 2000, "big.txt")])

    assert response.status_code == 413
    assert "0.001 MB" in response.text
    assert document_count(client) == 0


def test_body_over_the_request_limit_shows_the_form_again(make_app) -> None:
    # werkzeug refuses it while the CSRF check reads the form, before the view runs.
    client = make_app(MAX_UPLOAD_MB=0.001, WTF_CSRF_ENABLED=True).test_client()
    token = csrf_token_of(client.get("/").text)

    response = submit_form(client, [(b"x" * (1024 * 1024 + 4096), "huge.txt")], csrf_token=token)

    assert response.status_code == 413
    assert "Each file may have up to 0.001 MB" in response.text
    assert csrf_token_of(response.text)
    assert document_count(client) == 0


def test_files_each_within_the_limit_but_over_the_request_limit_together(make_app) -> None:
    # Three files of 0.9 MB under a 1 MB limit: the request limit (2 MB) is what they pass.
    client = make_app(MAX_UPLOAD_MB=1).test_client()
    files = [(bytes([65 + n]) * (900 * 1024), f"part-{n}.txt") for n in range(3)]

    response = submit_form(client, files)

    assert response.status_code == 413
    page = " ".join(response.text.split())
    assert "Nothing was uploaded: the files sent were over 2 MB together." in page
    assert "Each file may have up to 1 MB; send fewer files at once." in page
    assert document_count(client) == 0


def test_tampered_priority_is_refused(client: FlaskClient) -> None:
    response = submit_form(client, [(b"text", "a.txt")], priority="99")

    assert response.status_code == 422
    assert "priority" in response.text
    assert document_count(client) == 0


def test_post_without_csrf_token_is_refused(make_app) -> None:
    client = make_app(WTF_CSRF_ENABLED=True).test_client()

    response = submit_form(client, [(b"forged", "forged.txt")])

    assert response.status_code == 400
    assert "Nothing was uploaded" in response.text
    assert document_count(client) == 0


def test_post_with_csrf_token_is_accepted(make_app) -> None:
    client = make_app(WTF_CSRF_ENABLED=True).test_client()
    token = csrf_token_of(client.get("/").text)

    response = submit_form(client, [(b"genuine", "genuine.txt")], csrf_token=token)

    assert response.status_code == 303


# -- list and detail --------------------------------------------------------------


def test_list_escapes_filenames(client: FlaskClient) -> None:
    upload(client, b"hostile name", HOSTILE_NAME)

    page = client.get("/documents").text

    assert "&lt;img src=x onerror=alert(1)&gt;.txt" in page
    assert "<img src=x" not in page


def test_list_names_types_briefly(client: FlaskClient) -> None:
    upload(client, b"# Notes\n", "notes.md")
    upload(client, b"a,b\n1,2\n", "table.csv")

    cells = re.findall(r"<td title=\"([^\"]+)\">([^<]+)</td>", client.get("/documents").text)

    assert sorted(cells) == [("text/csv", "CSV"), ("text/markdown", "Markdown")]


def test_list_filters_by_status_and_refuses_unknown_ones(app: Flask, client: FlaskClient) -> None:
    upload(client, b"done already", "done.txt")
    run_queue(app)
    upload(client, b"still waiting", "waiting.txt")

    completed = client.get("/documents?status=completed").text
    everything = client.get("/documents?status=").text  # the filter's "all" option
    bad = client.get("/documents?status=nope")

    assert "done.txt" in completed and "waiting.txt" not in completed
    assert "done.txt" in everything and "waiting.txt" in everything
    assert bad.status_code == 422
    assert bad.mimetype == "text/html"


def test_detail_follows_a_pending_document_live(client: FlaskClient) -> None:
    document_id = upload(client, b"wait for me", HOSTILE_NAME).get_json()["id"]

    page = client.get(f"/documents/{document_id}").text

    assert f'data-status-url="/documents/{document_id}/status.json"' in page
    assert "js/status.js" in page
    assert "&lt;img src=x onerror=alert(1)&gt;.txt" in page
    assert "<img src=x" not in page


def test_detail_of_a_processed_document_shows_metadata_and_escaped_text(
    app: Flask, client: FlaskClient
) -> None:
    html = f"<html><head><title>{HOSTILE_TITLE}</title></head><body><p>Body {HOSTILE_TITLE}</p>"
    html = html.replace("<script>", "&lt;script&gt;").replace("</script>", "&lt;/script&gt;")
    document_id = upload(client, html.encode(), "page.html").get_json()["id"]
    run_queue(app)

    page = client.get(f"/documents/{document_id}").text

    assert "completed" in page
    assert "status.js" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert" not in page


def test_status_json_works_without_the_api_token(make_app) -> None:
    client = make_app(API_TOKEN="token").test_client()
    response = submit_form(client, [(b"polled", "polled.txt")])

    status = client.get(response.headers["Location"] + "/status.json")

    assert status.status_code == 200
    assert status.get_json()["status"] == "pending"


def test_unknown_document_page_is_an_html_404(client: FlaskClient) -> None:
    response = client.get("/documents/999")

    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "Document 999 does not exist." in response.text


# -- numbers the database cannot hold ----------------------------------------------

# Past PostgreSQL's INTEGER (2**31 - 1), past SQLite's (2**63 - 1), and far past both.
NOT_AN_ID = [0, -1, 2**31, 2**63, 10**40]


@pytest.mark.parametrize("path", ["/documents/{}", "/documents/{}/status.json"])
def test_a_document_id_out_of_range_is_a_404(client: FlaskClient, path: str) -> None:
    for number in NOT_AN_ID:
        assert client.get(path.format(number)).status_code == 404


# -- errors of paths no route matches -------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/documents/0", "/documents/abc", "/documents/99999999999", "/documents/1/bogus", "/nope"],
)
def test_a_page_path_no_route_matches_is_an_html_404(client: FlaskClient, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "404 Not Found" in response.text


@pytest.mark.parametrize(("method", "path"), [("PUT", "/documents"), ("POST", "/documents/1")])
def test_a_wrong_method_on_a_page_is_an_html_405_naming_the_allowed_ones(
    client: FlaskClient, method: str, path: str
) -> None:
    response = client.open(path, method=method)

    assert response.status_code == 405
    assert response.mimetype == "text/html"
    assert "405 Method Not Allowed" in response.text
    assert "GET" in response.headers["Allow"]


def test_a_list_page_out_of_range_is_an_html_422(client: FlaskClient) -> None:
    for field in ("page", "per_page"):
        for number in NOT_AN_ID:
            response = client.get(f"/documents?{field}={number}")

            assert response.status_code == 422
            assert response.mimetype == "text/html"
            assert field in response.text


def test_a_page_past_the_end_says_so_and_links_to_the_last_page(client: FlaskClient) -> None:
    # A stale link (documents were deleted since) or a typed page number.
    for n in range(3):
        upload(client, f"document {n}".encode(), f"doc-{n}.txt")

    response = client.get("/documents?page=7&per_page=2")

    assert response.status_code == 200
    page = " ".join(response.text.split())  # as a browser shows it
    assert "No documents." not in page
    assert "Page 7 is past the end: 3 documents fill 2 pages." in page
    assert 'href="/documents?page=2&amp;per_page=2">Go to the last page</a>' in page


# -- search, reprocess, delete, failures -------------------------------------------


def test_list_searches_file_names_ignoring_case(client: FlaskClient) -> None:
    upload(client, b"first", "Quarterly-Report.txt")
    upload(client, b"second", "notes.md")
    upload(client, b"third", "100%_done.txt")

    found = client.get("/documents?q=REPORT").text
    percent = client.get("/documents?q=%25_").text
    nothing = client.get("/documents?q=absent&status=completed").text

    assert "Quarterly-Report.txt" in found and "notes.md" not in found
    assert 'value="REPORT"' in found
    assert "100%_done.txt" in percent and "Quarterly-Report.txt" not in percent
    assert "No documents whose name contains" in nothing


def test_a_nul_in_the_search_is_dropped(client: FlaskClient) -> None:
    # No stored file name holds NUL, and PostgreSQL refuses it even as a query parameter.
    upload(client, b"first", "report.txt")
    upload(client, b"second", "notes.md")

    alone = client.get("/documents?q=%00")
    inside = client.get("/documents?q=rep%00ort")

    assert alone.status_code == 200
    assert "report.txt" in alone.text and "notes.md" in alone.text
    assert inside.status_code == 200
    assert "report.txt" in inside.text and "notes.md" not in inside.text
    assert 'value="report"' in inside.text


def test_search_keeps_the_query_in_the_pagination_links(client: FlaskClient) -> None:
    for number in range(3):
        upload(client, f"report {number}".encode(), f"report-{number}.txt")
    upload(client, b"other", "other.txt")

    page = client.get("/documents?q=report&per_page=2").text

    assert "(3 documents)" in page
    assert "q=report" in re.search(r'rel="next" href="([^"]+)"', page).group(1)


def test_reprocess_form_queues_the_document_again(make_app) -> None:
    app = make_app(WTF_CSRF_ENABLED=True)
    client = app.test_client()
    document_id = upload(client, b"process me twice", "twice.txt").get_json()["id"]
    run_queue(app)
    page = client.get(f"/documents/{document_id}").text
    token = csrf_token_of(page)

    forged = client.post(f"/documents/{document_id}/reprocess")
    response = client.post(f"/documents/{document_id}/reprocess", data={"csrf_token": token})

    assert forged.status_code == 400
    assert response.status_code == 303
    assert response.headers["Location"] == f"/documents/{document_id}"
    after = client.get(response.headers["Location"]).text
    assert "Queued for processing again." in after
    item = client.get(f"/api/documents/{document_id}").get_json()["queue_item"]
    assert item["operation"] == "reprocess" and item["status"] == "pending"


def test_delete_asks_first_then_deletes_with_the_form(make_app) -> None:
    client = make_app(WTF_CSRF_ENABLED=True).test_client()
    document_id = upload(client, b"delete me", HOSTILE_NAME).get_json()["id"]

    confirm = client.get(f"/documents/{document_id}/delete")
    forged = client.post(f"/documents/{document_id}/delete")

    assert confirm.status_code == 200
    assert "Delete &lt;img src=x onerror=alert(1)&gt;.txt?" in confirm.text
    assert "<img src=x" not in confirm.text
    assert f'action="/documents/{document_id}/delete"' in confirm.text
    assert forged.status_code == 400
    assert document_count(client) == 1

    token = csrf_token_of(confirm.text)
    response = client.post(f"/documents/{document_id}/delete", data={"csrf_token": token})

    assert response.status_code == 303
    assert response.headers["Location"] == "/documents"
    assert "Deleted &lt;img src=x onerror=alert(1)&gt;.txt." in client.get("/documents").text
    assert document_count(client) == 0
    assert client.get(f"/documents/{document_id}").status_code == 404
    assert (
        client.post(f"/documents/{document_id}/delete", data={"csrf_token": token}).status_code
        == 404
    )


def test_document_page_offers_reprocess_and_delete(client: FlaskClient) -> None:
    document_id = upload(client, b"actions", "actions.txt").get_json()["id"]

    page = client.get(f"/documents/{document_id}").text

    assert f'action="/documents/{document_id}/reprocess"' in page
    assert f'href="/documents/{document_id}/delete"' in page


def test_a_failed_document_shows_its_error_and_attempts(app: Flask, client: FlaskClient) -> None:
    document_id = upload(client, b'{"broken": <script>', "broken.json").get_json()["id"]
    run_queue(app)

    page = client.get(f"/documents/{document_id}").text

    assert client.get(f"/api/documents/{document_id}").get_json()["status"] == "failed"
    assert '<p class="error" data-field="error">' in page
    assert "<h2>Attempts</h2>" in page
    rows = re.findall(r"<tr>\s*<td>(\d+)</td>", page)
    assert rows == ["1"]
    assert "status-failed" in page
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None


def test_a_completed_document_shows_its_metadata(app: Flask, client: FlaskClient) -> None:
    document_id = upload(client, "Grüße aus Köln".encode("latin-1"), "latin.txt").get_json()["id"]
    run_queue(app)

    page = client.get(f"/documents/{document_id}").text

    assert "<h2>Metadata</h2>" in page
    assert "<dt>Encoding</dt>" in page
    assert "<h2>Attempts</h2>" not in page


def test_api_docs_is_html_whose_scripts_are_all_local(client: FlaskClient) -> None:
    response = client.get("/api/docs")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert "script-src" not in response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert re.search(r"<script(?![^>]*\bsrc=)", response.text) is None
    sources = re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]+)"', response.text)
    assert sources and all(source.startswith("/") for source in sources)
    assert 'data-spec-url="/api/openapi.json"' in response.text
    for source in sources:
        assert client.get(source).status_code == 200, source
    assert client.get("/api/docs/assets/index.html").status_code == 404


def current_nav_links(page: str) -> list[tuple[str, str]]:
    """The header's links marked current: (aria-current value, label)."""
    nav = page.split("<nav", 1)[1].split("</nav>", 1)[0]
    return re.findall(r'<a [^>]*aria-current="([a-z]+)"[^>]*>([^<]+)</a>', nav)


def test_the_header_says_which_of_its_pages_is_shown(client: FlaskClient) -> None:
    # A screen reader announces "current page" on the link marked so (and the style
    # shows it); without it a user of one could not tell where in the site they are.
    document = upload(client).get_json()
    pages = {
        "/": [("page", "Upload")],
        "/documents": [("page", "Documents")],
        f"/documents/{document['id']}": [("true", "Documents")],
        f"/documents/{document['id']}/delete": [("true", "Documents")],
        "/api/docs": [("page", "API")],
    }
    for path, expected in pages.items():
        page = client.get(path).get_data(as_text=True)
        assert current_nav_links(page) == expected, path
