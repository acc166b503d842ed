"""The admin console's bulk actions on a big backlog: "Retry all failed", the purge,
"Cancel" of the selected items, each while uploads go on.

Run from the project root:

    .venv/bin/python -m bench.bulk_actions [--sizes 10000 100000] [--backends postgresql sqlite]

For each back end and size: a fresh migrated database (``bench.perf.databases``)
filled with ``size`` documents whose only queue item failed for good after one
attempt (direct INSERTs, then VACUUM ANALYZE on PostgreSQL, as autovacuum would).
Then, each through the console's POST in the Flask test client with the admin
login, while a second thread uploads one small file after the other through the
API (its own test client, the same app and database):

- ``POST /admin/retry-failed``: every item back to pending;
- ``POST /admin/bulk/cancel`` with the filter status=pending (at most the console's
  BULK_LIMIT items, newest first);
- ``POST /admin/purge`` of everything finished more than 30 days ago (the items are
  first marked completed 40 days ago, not timed).

It prints how long each request took, how many uploads committed during it and the
slowest of them: an upload that waits for the whole action shows it there. nginx's
``proxy_read_timeout`` is 60 s by default: a request longer than that is cut off by
a proxy in front of the app, though the action goes on to its end.
"""

from __future__ import annotations

import argparse
import base64
import io
import re
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .perf.databases import BACKENDS, Database, fill_queue, templates

PASSWORD = "bench"
PROXY_READ_TIMEOUT_SECONDS = 60
# Every item failed for good after its one attempt, with its attempt in the history.
_FAIL_ALL = (
    "UPDATE queue_items SET status = 'failed', attempts = 1, started_at = created_at,"
    " finished_at = created_at, last_error = 'processor bug'",
    "UPDATE documents SET status = 'failed', error = 'processor bug'",
    "INSERT INTO queue_attempts (queue_item_id, attempt, worker, started_at, finished_at,"
    " outcome, error) SELECT id, 1, 'bench', created_at, created_at, 'failed', 'processor bug'"
    " FROM queue_items",
)
_FINISHED_LONG_AGO = {
    "postgresql": "UPDATE queue_items SET status = 'completed',"
    " finished_at = now() - interval '40 days' WHERE status = 'pending'",
    "sqlite": "UPDATE queue_items SET status = 'completed',"
    " finished_at = strftime('%Y-%m-%d %H:%M:%f', 'now', '-40 days') WHERE status = 'pending'",
}


@dataclass(frozen=True)
class Figures:
    action: str
    seconds: float
    answer: str
    uploads: int
    slowest_upload_ms: float


def fill_failed(database: Database, size: int) -> None:
    """``size`` documents, each with one failed item and its attempt."""
    fill_queue(database, 1, size, timedelta(seconds=-1))
    with closing(database.connect()) as connection:
        connection.execute("BEGIN")
        for statement in _FAIL_ALL:
            connection.execute(statement)
        connection.execute("COMMIT")
        if database.kind == "postgresql":
            connection.execute("VACUUM ANALYZE")


def _run_sql(database: Database, statement: str) -> None:
    with closing(database.connect()) as connection:
        connection.execute(statement)


@contextmanager
def admin_app(database: Database) -> Iterator[Any]:
    from docqueue_app import create_app
    from docqueue_app.models import db

    app = create_app(
        {
            "DATABASE_URL": database.url,
            "SECRET_KEY": "bench",
            "SCHEDULER_ENABLED": False,
            "ADMIN_PASSWORD": PASSWORD,
            "WTF_CSRF_ENABLED": False,
        }
    )
    try:
        yield app
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


class Uploader(threading.Thread):
    """Uploads small distinct files one after the other until stopped; times each."""

    def __init__(self, app: Any) -> None:
        super().__init__(daemon=True)
        self.client = app.test_client()
        self.stopped = threading.Event()
        self.timings_ms: list[float] = []
        self.serial = 0

    def run(self) -> None:
        while not self.stopped.is_set():
            self.serial += 1
            data = f"upload {self.serial} {time.time_ns()}".encode()
            started = time.perf_counter()
            response = self.client.post(
                "/api/documents",
                data={"file": (io.BytesIO(data), f"u{self.serial}.txt")},
                content_type="multipart/form-data",
            )
            if response.status_code != 202:
                raise RuntimeError(f"upload answered {response.status_code}")
            self.timings_ms.append((time.perf_counter() - started) * 1000)


def timed_post(app: Any, action: str, path: str, form: dict[str, str]) -> Figures:
    """POST ``path`` as the admin while uploads go on; what it took and what they saw."""
    client = app.test_client()
    login = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    uploader = Uploader(app)
    uploader.start()
    started = time.perf_counter()
    response = client.post(path, data=form, headers={"Authorization": f"Basic {login}"})
    seconds = time.perf_counter() - started
    uploader.stopped.set()
    uploader.join()
    flashed = client.get("/admin/", headers={"Authorization": f"Basic {login}"})
    answer = _flash_of(flashed.get_data(as_text=True)) or str(response.status_code)
    timings = uploader.timings_ms
    return Figures(action, seconds, answer, len(timings), max(timings, default=0.0))


def _flash_of(html: str) -> str:
    """The console's flashed messages (what the admin reads)."""
    messages = re.findall(r'<p class="notice" role="status">(.*?)</p>', html, re.S)
    return " ".join(" ".join(message.split()) for message in messages)


def measure(database: Database, size: int) -> list[Figures]:
    fill_failed(database, size)
    with admin_app(database) as app:
        figures = [timed_post(app, "retry all failed", "/admin/retry-failed", {})]
        pending = {"status": "pending"}
        figures.append(timed_post(app, "cancel selected (pending)", "/admin/bulk/cancel", pending))
        _run_sql(database, _FINISHED_LONG_AGO[database.kind])
        figures.append(timed_post(app, "purge > 30 days", "/admin/purge", {"days": "30"}))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    args = parser.parse_args()
    print(f"{'back end':<11} {'failed':>8}  {'action':<26} {'seconds':>8}  uploads  slowest")
    with templates() as made:
        for kind in args.backends:
            for size in args.sizes:
                with made.fresh(kind) as database:
                    for f in measure(database, size):
                        late = f.seconds > PROXY_READ_TIMEOUT_SECONDS
                        over = " (past a proxy_read_timeout of 60 s)" if late else ""
                        print(
                            f"{kind:<11} {size:>8,}  {f.action:<26} {f.seconds:8.2f}"
                            f"  {f.uploads:7,} {f.slowest_upload_ms:6.0f}ms  {f.answer}{over}",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
