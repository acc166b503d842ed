"""The admin console on a big queue: 1,000,000 queue items on PostgreSQL.

Run from the project root (or `make bench`):

    .venv/bin/python -m bench.admin_dashboard [--items 1000000] [--runs 5]

Creates its own database (docqueue_bench_admin on 127.0.0.1:5432, user postgres),
migrates it, bulk-inserts the documents and one queue item each across every
status with ``INSERT ... SELECT generate_series`` (then VACUUM ANALYZE, as
autovacuum would), and times the console's pages through the test client with
the admin login: the median of ``--runs`` requests each. Drops the database at
the end.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import time

import psycopg

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_BENCH_DATABASE = "docqueue_bench_admin"
PASSWORD = "bench"

# n % 100 decides an item's status: 70% completed, 15% failed, 8% cancelled,
# 6% pending, 1% in progress; finished items spread over the last 30 days.
STATUS_OF_N = """
    CASE WHEN n % 100 < 70 THEN 'completed' WHEN n % 100 < 85 THEN 'failed'
         WHEN n % 100 < 93 THEN 'cancelled' WHEN n % 100 < 99 THEN 'pending'
         ELSE 'in_progress' END
"""
DOCUMENT_STATUS_OF_N = STATUS_OF_N.replace("'in_progress'", "'processing'")
INSERT_DOCUMENTS = f"""
    INSERT INTO documents (id, filename, content_type, size, sha256, status, error,
                           created_at, updated_at)
    SELECT n, 'file-' || n || '.pdf', 'application/pdf', 1000 + n % 5000,
           md5(n::text) || md5((n + 1)::text), {DOCUMENT_STATUS_OF_N},
           CASE WHEN n % 100 BETWEEN 70 AND 84 THEN 'PDF error ' || (n % 997) END,
           now() - (%(items)s - n) * interval '2 seconds',
           now() - (%(items)s - n) * interval '2 seconds'
    FROM generate_series(1, %(items)s) AS n
"""
INSERT_ITEMS = f"""
    INSERT INTO queue_items (id, document_id, operation, status, priority, attempts,
                             max_attempts, run_at, locked_by, lease_expires_at, last_error,
                             created_at, started_at, finished_at)
    SELECT n, n, 'process', {STATUS_OF_N}, n % 11,
           CASE WHEN n % 100 < 93 OR n % 100 = 99 THEN 1 + n % 3 ELSE 0 END, 5,
           now() - (n % 600) * interval '1 second',
           CASE WHEN n % 100 = 99 THEN 'bench-worker' END,
           CASE WHEN n % 100 = 99 THEN now() + interval '1 hour' END,
           CASE WHEN n % 100 BETWEEN 70 AND 84 THEN 'PDF error ' || (n % 997) END,
           now() - (%(items)s - n) * interval '2 seconds',
           CASE WHEN n % 100 < 93 OR n % 100 = 99
                THEN now() - (n % 43200) * interval '1 minute' END,
           CASE WHEN n % 100 < 93 THEN now() - (n % 43200) * interval '1 minute' END
    FROM generate_series(1, %(items)s) AS n
"""
PAGES = {
    "GET /admin/ (dashboard, no filter)": "/admin/",
    "GET /admin/stats.json (what admin.js polls)": "/admin/stats.json",
    "GET /admin/?filename=file-123456 (file-name search)": "/admin/?filename=file-123456",
    "GET /admin/?status=failed&filename=file-99 (status + name)": (
        "/admin/?status=failed&filename=file-99"
    ),
    "GET /admin/?status=in_progress (rare status)": "/admin/?status=in_progress",
    "GET /admin/?error=error%20996 (error text)": "/admin/?error=error%20996",
    "GET /admin/?page=200 (deep page)": "/admin/?page=200",
}


def _admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


def fill(url: str, items: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        # No parameters: psycopg then leaves the SQL's % (modulo) alone.
        for statement in (INSERT_DOCUMENTS, INSERT_ITEMS):
            conn.execute(statement.replace("%(items)s", str(int(items))))
        for table in ("documents", "queue_items"):
            conn.execute(f"SELECT setval('{table}_id_seq', {items})")
        conn.execute("VACUUM ANALYZE documents")
        conn.execute("VACUUM ANALYZE queue_items")
    return time.perf_counter() - started


def time_page(client, path: str, runs: int) -> tuple[float, float, int]:
    """(first request, median of ``runs`` more) in milliseconds, and the status code."""
    timings = []
    status = 0
    for _ in range(runs + 1):
        started = time.perf_counter()
        response = client.get(path)
        timings.append((time.perf_counter() - started) * 1000)
        status = response.status_code
    return timings[0], statistics.median(timings[1:]), status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from flask_migrate import upgrade

    from docqueue_app import create_app
    from docqueue_app.models import db

    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + PG_BENCH_DATABASE
    _admin(f'DROP DATABASE IF EXISTS "{PG_BENCH_DATABASE}" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{PG_BENCH_DATABASE}"')
    app = create_app(
        {
            "DATABASE_URL": url,
            "SECRET_KEY": "bench",
            "SCHEDULER_ENABLED": False,
            "ADMIN_PASSWORD": PASSWORD,
        }
    )
    try:
        with app.app_context():
            upgrade()
        print(f"Admin console on PostgreSQL, {args.items:,} queue items and documents")
        print(f"  bulk insert + VACUUM ANALYZE: {fill(url, args.items):.1f} s")
        client = app.test_client()
        login = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Basic {login}"
        print(f"  {'page':<62} {'first':>9} {'median':>9}  status")
        for label, path in PAGES.items():
            first, median, status = time_page(client, path, args.runs)
            print(f"  {label:<62} {first:7.1f}ms {median:7.1f}ms  {status}")
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
        _admin(f'DROP DATABASE IF EXISTS "{PG_BENCH_DATABASE}" WITH (FORCE)')


if __name__ == "__main__":
    main()
