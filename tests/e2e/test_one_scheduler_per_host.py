"""End to end: one gunicorn worker of a host runs the queue scheduler; the others stand by.

Which process processed a document is on its attempt (``worker`` is
``host:pid:...``), so the tests read who did the work straight from the database.
"""

from __future__ import annotations

import os
import signal
import time

import psycopg

from tests.e2e.server import Server, document_statuses, run_cli, wait_for

DOCUMENTS = 6
# Polls a second of one idle scheduler; short, so that polling shows in a few seconds.
POLL_INTERVAL = 0.2
MEASURE_SECONDS = 5


def attempt_pids(database_url: str) -> list[int]:
    """The process id behind every attempt, in the order they started."""
    from docqueue_app import create_app
    from docqueue_app.models import QueueAttempt, db

    app = create_app({"DATABASE_URL": database_url, "SECRET_KEY": "t", "SCHEDULER_ENABLED": False})
    with app.app_context():
        workers = db.session.scalars(db.select(QueueAttempt.worker).order_by(QueueAttempt.id))
        pids = [int(worker.split(":")[1]) for worker in workers]
        db.engine.dispose()
    return pids


def upload_and_wait(server: Server, names: list[str]) -> None:
    for name in names:
        assert server.upload(name, f"contents of {name}".encode())[0] == 202
    wait_for(lambda: set(document_statuses(server)) == {"completed"}, "every document to complete")


def test_one_worker_schedules_and_another_takes_over_when_it_is_killed(server_env, tmp_path):
    database_url = server_env["DATABASE_URL"]
    server = Server(server_env, workers=3, log_path=tmp_path / "server.log").start()
    try:
        upload_and_wait(server, [f"first-{n}.txt" for n in range(DOCUMENTS)])
        pids = set(attempt_pids(database_url))
        assert len(pids) == 1, f"documents processed by several workers: {pids}"
        [scheduling] = pids
        assert scheduling in server.worker_pids()

        os.kill(scheduling, signal.SIGKILL)
        upload_and_wait(server, ["after-the-kill.txt"])
        taking_over = attempt_pids(database_url)[-1]
        assert taking_over != scheduling
        assert taking_over in server.worker_pids()
    finally:
        server.stop()


def idle_transactions_per_second(env: dict[str, str], workers: int, tmp_path) -> float:
    """Transactions a second committed in the database while a server of ``workers`` idles."""
    url = env["DATABASE_URL"]
    server = Server(env, workers=workers, log_path=tmp_path / f"server-{workers}.log").start()
    try:
        wait_for(lambda: len(server.worker_pids()) == workers, "every worker to start")
        time.sleep(2)  # past the workers' start, and past the stats' flush delay (1 s)
        with psycopg.connect(url, autocommit=True) as conn:
            before = committed_transactions(conn)
            time.sleep(MEASURE_SECONDS)
            after = committed_transactions(conn)
    finally:
        server.stop()
    return (after - before) / MEASURE_SECONDS


def committed_transactions(conn: psycopg.Connection) -> int:
    return conn.execute(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()[0]


def test_the_idle_query_rate_does_not_grow_with_gunicorn_workers(postgresql_clean, tmp_path):
    env = {
        "DATABASE_URL": postgresql_clean,
        "DOCQUEUE_SECRET_KEY": "e2e",
        "DOCQUEUE_POLL_INTERVAL": str(POLL_INTERVAL),
    }
    assert run_cli(env, "db", "upgrade").returncode == 0

    one = idle_transactions_per_second(env, 1, tmp_path)
    four = idle_transactions_per_second(env, 4, tmp_path)

    assert one > 0, "no polling seen: the measure shows nothing"
    # Four schedulers would poll four times as often; one scheduler per host, about as often.
    assert four < 2 * one, f"idle transactions/s: {one:.1f} with 1 worker, {four:.1f} with 4"
