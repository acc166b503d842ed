"""Small multipart bodies (uploads through the API and the web form) parsed by ``multipart``.

Werkzeug's multipart parser compiles two regular expressions for every body, each
built around the body's boundary, which clients choose at random: 0.4 ms of CPU
per request, the largest single share of a small upload over HTTP (12-14% of a
gunicorn worker's GIL time, py-spy, 8 clients). ``multipart`` (the parser of
Bottle) finds boundaries with ``bytes.find`` and compiles nothing per body: a
one-file upload's body parses in 24-28 µs instead of 586 µs.

Only bodies Werkzeug would keep in memory anyway (up to ``IN_MEMORY_BYTES``, read
whole) take that path, and Werkzeug still decides everything it does not
change: part names and filenames (``parse_options_header``, ``filename*``
included), text fields' charsets, MAX_FORM_MEMORY_SIZE. A body ``multipart``
refuses (malformed, over one of its limits), or one that holds its boundary
anywhere but at the part boundaries ``multipart`` found, is parsed again by
Werkzeug's parser, so every body is answered as before. (The two read such a
body differently: Werkzeug's own test client writes an empty part without the
line break before the next boundary, which only Werkzeug's parser takes as the
part's end.)
Larger bodies go to Werkzeug's parser directly: their transfer costs far more
than its two patterns.

``DocqueueRequest`` also answers a body the WSGI server cannot read as a 400: a
chunked upload whose framing is broken (a chunk size that is not hexadecimal, a
chunk without its line break) made gunicorn raise its own ParseException in the
middle of reading the body, which Werkzeug passes on, and the client got a 500
(the log a traceback) for a request that was simply malformed.
"""

from __future__ import annotations

import errno
import io
from collections.abc import Callable, Iterator
from typing import IO, Any

import multipart
from flask import Request
from werkzeug.datastructures import FileStorage, Headers
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, ServiceUnavailable
from werkzeug.formparser import FormDataParser, MultiPartParser
from werkzeug.http import parse_options_header

from .database import RETRY_AFTER_SECONDS

# Werkzeug's default_stream_factory keeps a file of up to this size in memory.
IN_MEMORY_BYTES = 500 * 1024
# Werkzeug writes a larger body's files to the temporary folder (TMPDIR). That folder
# full is the server's trouble, not the client's: a 503 to retry later, as a full
# database is, not a 500.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})
TEMPORARY_FOLDER_FULL = (
    "The server's temporary folder is full: nothing was stored; try again later."
)
# Werkzeug's own reading of a text field's charset (its list of those it trusts).
_WERKZEUG_PARTS = MultiPartParser()


class MultipartFormDataParser(FormDataParser):
    """Werkzeug's form parser, with small multipart bodies parsed by ``multipart``.

    A multipart body that cannot be split into its parts is a 400 saying why.
    Werkzeug's parser reads it as a form without fields (silently), so the upload
    answered "The multipart field 'file' is missing" to a client that had sent one: a
    body cut before its closing boundary, one written with another boundary, a
    Content-Type set by hand without its boundary (``requests`` given ``files=`` and
    a Content-Type of the caller's), a filename in Latin-1.
    """

    def _parse_multipart(
        self,
        stream: IO[bytes],
        mimetype: str,
        content_length: int | None,
        options: dict[str, str],
    ) -> tuple[IO[bytes], Any, Any]:
        try:
            return self._parse_multipart_body(stream, mimetype, content_length, options)
        except ValueError as error:  # Werkzeug's parser: the body cannot be split
            raise BadRequest(_unsplittable(error, options.get("boundary", ""))) from None
        except RequestEntityTooLarge as error:
            if error.description != RequestEntityTooLarge.description or (
                content_length is None and getattr(stream, "is_exhausted", False)
            ):
                raise  # ours, or a chunked body past the request limit (MAX_CONTENT_LENGTH)
            raise RequestEntityTooLarge(self._outside_files(options.get("boundary", ""))) from None
        except OSError as error:
            if error.errno not in _NO_ROOM:
                raise
            raise ServiceUnavailable(
                TEMPORARY_FOLDER_FULL, retry_after=RETRY_AFTER_SECONDS
            ) from None

    def _outside_files(self, boundary: str) -> str:
        """Werkzeug's 413 for a form's text, which named no limit: errors.py took it for
        a request over the limit ("The request was over 51 MB") whatever its size."""
        return (
            f"The multipart body has a part without a filename (a text field) over "
            f"{(self.max_form_memory_size or 0) / 1000:g} KB, over {self.max_form_parts} "
            f"parts, or no part starting with its boundary --{boundary}: send a file as a "
            "file part, with its filename (curl -F file=@path). Nothing was stored."
        )

    def _parse_multipart_body(
        self,
        stream: IO[bytes],
        mimetype: str,
        content_length: int | None,
        options: dict[str, str],
    ) -> tuple[IO[bytes], Any, Any]:
        boundary = options.get("boundary", "")
        if not boundary or content_length is None or content_length > IN_MEMORY_BYTES:
            return super()._parse_multipart(stream, mimetype, content_length, options)
        body = stream.read(content_length)
        parsed = self._parse_small(body, boundary)
        if parsed is None:
            return super()._parse_multipart(io.BytesIO(body), mimetype, content_length, options)
        fields, files = parsed
        return stream, self.cls(fields), self.cls(files)

    def _parse_small(
        self, body: bytes, boundary: str
    ) -> tuple[list[tuple[str, str]], list[tuple[str, FileStorage]]] | None:
        """The body's fields and files; None when ``multipart`` refuses the body or
        Werkzeug's parser might read it differently."""
        try:
            delimiter = b"--" + boundary.encode("ascii")
            parts = multipart.MultipartParser(
                io.BytesIO(body),
                boundary,
                len(body),
                part_limit=self.max_form_parts or 1000,
                spool_limit=len(body) + 1,  # every part stays in memory
                memory_limit=len(body) + 1,
            ).parts()
        except (UnicodeEncodeError, multipart.MultipartError):
            return None
        if body.count(delimiter) != len(parts) + 1:
            return None  # the boundary also occurs where multipart saw none
        fields: list[tuple[str, str]] = []
        files: list[tuple[str, FileStorage]] = []
        for part in parts:
            headers = Headers(part.headerlist)
            _, disposition = parse_options_header(headers.get("content-disposition"))
            name = disposition.get("name", "")
            if "filename" in disposition:
                storage = FileStorage(part.file, disposition["filename"], name, headers=headers)
                files.append((name, storage))
            else:
                fields.append((name, self._field_value(part, headers)))
        return fields, files

    def _field_value(self, part: multipart.MultipartPart, headers: Headers) -> str:
        if self.max_form_memory_size is not None and part.size > self.max_form_memory_size:
            raise RequestEntityTooLarge()
        return part.raw.decode(_WERKZEUG_PARTS.get_part_charset(headers), "replace")


def _unsplittable(error: ValueError, boundary: str) -> str:
    """What was wrong with a multipart body Werkzeug's parser refused, for its client."""
    if not boundary:
        why = (
            "its Content-Type names no boundary: let the client write this header itself "
            "(it adds '; boundary=...')"
        )
    elif isinstance(error, UnicodeDecodeError):
        why = "a part's headers are not UTF-8: send a filename in UTF-8"
    elif "cannot parse beyond" in str(error):  # Werkzeug: the body ended in this state
        why = (
            f"no part starts with its boundary --{boundary}, or it ends before the "
            f"closing --{boundary}--"
        )
    else:
        why = str(error)  # Werkzeug: "Missing Content-Disposition header"
    return f"The multipart body cannot be split into its parts: {why}. Nothing was stored."


class ReadableBody:
    """The WSGI server's request body (``wsgi.input``), whose read errors are the client's.

    Werkzeug answers an OSError or ValueError of the server's stream (a client that
    hung up) with its own 400, ClientDisconnected, and lets any other exception
    through. gunicorn raises neither for a body whose framing it cannot follow (its
    ``http.errors.ParseException``, imported by no one here: 43 ms of imports for an
    ``isinstance``): those become a 400 that says what was wrong.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def read(self, *size: int | None) -> bytes:
        return self._reading(self._stream.read, *size)

    def readline(self, *size: int | None) -> bytes:
        return self._reading(self._stream.readline, *size)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    @staticmethod
    def _reading(method: Callable[..., bytes], *size: int | None) -> bytes:
        try:
            return method(*size)
        except (OSError, ValueError):
            raise  # Werkzeug's: the client hung up
        except Exception as error:
            raise BadRequest(_unreadable(error)) from None


def _unreadable(error: Exception) -> str:
    return f"The request body could not be read ({error}). Nothing was stored."


class DocqueueRequest(Request):
    """Flask's request, with multipart bodies parsed by ``MultipartFormDataParser`` and
    the server's body errors answered as 400 (``ReadableBody``)."""

    form_data_parser_class = MultipartFormDataParser

    def __init__(self, environ: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        body = environ.get("wsgi.input")
        if body is not None and not isinstance(body, ReadableBody):
            environ["wsgi.input"] = ReadableBody(body)
        super().__init__(environ, *args, **kwargs)
