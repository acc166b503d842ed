"""The answers gunicorn writes itself, in the API's JSON error shape.

gunicorn refuses some requests before docqueue sees them (a bad Content-Length, a
broken request line, headers over its limits…) and answers for the app when it
fails where Flask cannot (a response header gunicorn will not send): its 500.
It wrote each as an HTML page; API clients read JSON errors (SPEC §4).
"""

from __future__ import annotations

import json
import socket
from http import HTTPStatus

from gunicorn import util

# gunicorn leaves no message on its 500: the reason is in its log, with a traceback.
UNEXPLAINED = "The server failed to answer this request. The reason is in its log."


def answer_gunicorn_errors_in_json() -> None:
    """Make this worker process write gunicorn's own error answers as JSON.

    gunicorn's ``Worker.handle_error`` chooses the status and message, logs the
    request and then calls ``gunicorn.util.write_error`` to write the HTML page.
    Replacing that one function keeps all of gunicorn's choices and log lines,
    without copying ``handle_error`` and its list of exceptions.
    """
    util.write_error = write_json_error


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """``gunicorn.util.write_error``'s job, with a JSON body: the same status and
    ``Connection: close``."""
    reason = _reason_of(status_int, reason)
    body = json.dumps({"code": status_int, "status": reason, "message": mesg or UNEXPLAINED})
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    # json.dumps escapes every non-ASCII character: the body is ASCII, as is its length.
    util.write_nonblock(sock, (head + body).encode("ascii"))


def _reason_of(status_int: int, reason: str) -> str:
    # gunicorn starts from 400 "Bad Request" and keeps that reason where it changes
    # only the code: its 501 (an unknown transfer coding) and its 500 for a bad
    # setting. Every other reason it gives is its code's.
    if reason == HTTPStatus.BAD_REQUEST.phrase and status_int != HTTPStatus.BAD_REQUEST:
        return HTTPStatus(status_int).phrase
    return reason
