"""Multipart bodies read by ``multipart`` (small ones) come out exactly as Werkzeug's parser
reads them: the same fields, the same files with the same names, headers and bytes.

Compared on bodies as browsers write them, as Werkzeug's test client writes them
(an empty part without the line break before the next boundary), with other
line breaks, with the boundary inside a part, and cut short or with junk added.
"""

from __future__ import annotations

import io
import re
import uuid
from typing import Any

from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.exceptions import BadRequest
from werkzeug.formparser import FormDataParser
from werkzeug.test import encode_multipart

from docqueue_app.form_parsing import IN_MEMORY_BYTES, MultipartFormDataParser

BOUNDARY_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?"
NAME_CHARS = st.characters(codec="utf-8", exclude_characters='"\\\r\n', exclude_categories=["Cs"])


def read(parser_class: type[FormDataParser], body: bytes, boundary: str) -> Any:
    """What a parser makes of ``body``: the fields, and each file's name, filename,
    headers and bytes; or the error it raised.

    A body that does not follow its boundary is refused by both: Werkzeug's parser
    raises ValueError (its form parser, silent, then reads no fields), ours a 400.
    """
    try:
        _, form, files = parser_class(silent=False).parse(
            io.BytesIO(body), "multipart/form-data", len(body), {"boundary": boundary}
        )
    except (ValueError, BadRequest):
        return "refused"
    except Exception as error:  # compared: both must raise alike
        return type(error)
    return (
        list(form.items(multi=True)),
        [
            (name, file.filename, list(file.headers.items()), file.read())
            for name, file in files.items(multi=True)
        ],
    )


def assert_read_alike(body: bytes, boundary: str) -> None:
    assert read(MultipartFormDataParser, body, boundary) == read(FormDataParser, body, boundary)


# Bytes that make parsing hard: line breaks, dashes, and pieces of a boundary.
tricky_bytes = st.lists(
    st.sampled_from([b"\r\n", b"\r", b"\n", b"--", b"-", b" ", b"x", b"\x00", b"\xff"])
    | st.binary(max_size=8),
    max_size=12,
).map(b"".join)
parts = st.lists(
    st.tuples(
        st.text(NAME_CHARS, min_size=1, max_size=8),
        st.none() | st.text(NAME_CHARS, max_size=8),
        tricky_bytes,
    ),
    max_size=4,
)
boundaries = st.text(BOUNDARY_CHARS, min_size=1, max_size=70)


def as_browsers_write(fields: list[tuple[str, str | None, bytes]], boundary: str) -> bytes:
    body = b""
    for name, filename, content in fields:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if filename is not None:
            head += "Content-Type: application/octet-stream\r\n"
        body += head.encode() + b"\r\n" + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


@settings(max_examples=300, deadline=None)
@given(parts, boundaries)
def test_bodies_as_browsers_write_them(fields: Any, boundary: str) -> None:
    assert_read_alike(as_browsers_write(fields, boundary), boundary)


@settings(max_examples=300, deadline=None)
@given(parts, boundaries, st.sampled_from([b"\n", b"\r", b"\r\n\r\n", b""]), st.data())
def test_bodies_with_other_line_breaks_or_cut_or_padded(
    fields: Any, boundary: str, line_break: bytes, data: st.DataObject
) -> None:
    body = as_browsers_write(fields, boundary)
    changed = data.draw(
        st.sampled_from(
            [
                body.replace(b"\r\n", line_break),
                body[: data.draw(st.integers(0, len(body)))],
                body + data.draw(tricky_bytes),
                data.draw(tricky_bytes) + body,
            ]
        )
    )
    assert_read_alike(changed, boundary)


@settings(max_examples=200, deadline=None)
@given(parts, boundaries, st.data())
def test_a_part_holding_the_boundary(fields: Any, boundary: str, data: st.DataObject) -> None:
    inside = data.draw(st.sampled_from([b"", b"\r\n", b"\n", b"\r"])) + f"--{boundary}".encode()
    fields = [*fields, ("file", "inside.txt", b"before" + inside + b"after")]
    assert_read_alike(as_browsers_write(fields, boundary), boundary)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(NAME_CHARS, min_size=1, max_size=8),
        st.text(max_size=6) | tricky_bytes.map(lambda content: (io.BytesIO(content), "f.bin")),
        max_size=4,
    )
)
def test_bodies_as_werkzeug_s_test_client_writes_them(data: dict[str, Any]) -> None:
    boundary = "---------------WerkzeugFormPart_1.2"
    _, body = encode_multipart(data, boundary)
    assert_read_alike(body, boundary)


def test_a_large_body_is_read_by_werkzeug_s_parser_alike() -> None:
    body = as_browsers_write([("file", "big.bin", b"\r\n-" * IN_MEMORY_BYTES)], "b")

    assert_read_alike(body, "b")


def test_an_upload_compiles_no_pattern_for_its_boundary(client: FlaskClient) -> None:
    # Werkzeug's parser compiles two patterns around each body's boundary, which
    # clients choose at random: 0.4 ms of every upload's CPU.
    boundary = f"docqueue-{uuid.uuid4().hex}"
    body = as_browsers_write([("file", "a.txt", b"some text")], boundary)

    response = client.post(
        "/api/documents", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )

    assert response.status_code == 202
    assert response.get_json()["filename"] == "a.txt"
    compiled = [key for key in re._cache if boundary.encode() in str(key).encode()]  # type: ignore[attr-defined]
    assert compiled == []
