"""docqueue's app with one route whose answer gunicorn refuses to send.

The one error gunicorn answers on the app's behalf: the app fails where Flask
cannot answer for it, and gunicorn writes its own 500 (test_malformed_requests.py).
"""

from flask import Response

from docqueue_app import create_app

REFUSED_HEADER_PATH = "/api/refused-header"

app = create_app()


@app.get(REFUSED_HEADER_PATH)
def answer_with_a_header_name_gunicorn_refuses() -> Response:
    # Werkzeug passes a space in a header's name on; gunicorn raises on it once the
    # app has returned, outside Flask's error handling.
    return Response("{}", headers={"Bad Name": "refused"})
