"""Claims stay O(log n): a backlog of items not yet due costs an idle poll or a claim nothing.

Every statement a poll and a claim send is captured as sent and EXPLAINed
(EXPLAIN QUERY PLAN on SQLite, EXPLAIN on PostgreSQL after ANALYZE): each reads
queue_items through an index range, never a scan of the table nor a sort of it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from bench.history_drain import FINISH_EVERY_ITEM
from docqueue_app.models import QueueItem, db, utcnow
from docqueue_app.queue import DocumentQueueService
from docqueue_app.queue.service import Outcome
from docqueue_app.states import MAX_PRIORITY, MIN_PRIORITY
from tests.conftest import app_factory
from tests.helpers import backend_name, execute_sql, statements_run

PRIORITIES = range(MIN_PRIORITY, MAX_PRIORITY + 1)
BACKLOG = 20_000  # enough for PostgreSQL's planner to prefer an index to a scan


def add_items(
    app: Flask, count: int, due_in: timedelta, first: int = 1, analyze: bool = True
) -> None:
    """``count`` documents, each with one pending item of priority n % 11, due in ``due_in``.

    Inserted with two INSERT ... SELECT over a recursive counter, as fast as
    the database can write them; then PostgreSQL's statistics are brought up
    to date, unless ``analyze`` is False.
    """
    counter = (
        "WITH RECURSIVE n(i) AS (SELECT CAST(:first AS INTEGER)"
        " UNION ALL SELECT i + 1 FROM n WHERE i < :last)"
    )
    execute_sql(
        app,
        f"{counter} INSERT INTO documents"
        " (filename, content_type, size, sha256, status, created_at, updated_at)"
        " SELECT 'backlog-' || i, 'text/plain', 1, 'backlog-' || i, 'pending', :now, :now FROM n",
        first=first,
        last=first + count - 1,
        now=utcnow(),
    )
    execute_sql(
        app,
        "INSERT INTO queue_items (document_id, operation, status, priority, attempts,"
        " max_attempts, run_at, created_at)"
        f" SELECT d.id, 'process', 'pending', d.id % {len(PRIORITIES)}, 0, 3, :run_at, :now"
        " FROM documents AS d LEFT JOIN queue_items AS q ON q.document_id = d.id"
        " WHERE q.id IS NULL",
        run_at=utcnow() + due_in,
        now=utcnow(),
    )
    if analyze and backend_name(app) == "postgresql":
        execute_sql(app, "ANALYZE")


@contextmanager
def driver_cursor(app: Flask) -> Iterator[Any]:
    """A cursor on one of the app's driver connections; what it did is rolled back."""
    with app.app_context():
        connection = db.engine.raw_connection()
    try:
        yield connection.cursor()
        connection.rollback()
    finally:
        connection.close()


def plan_of(app: Flask, statement: str, parameters: Any, settings: Sequence[str] = ()) -> str:
    """The database's plan for a statement exactly as the app sent it (not run), under
    the planner settings its transaction made first."""
    explain = "EXPLAIN QUERY PLAN " if backend_name(app) == "sqlite" else "EXPLAIN "
    with driver_cursor(app) as cursor:
        for setting in settings:
            cursor.execute(setting)
        cursor.execute(explain + statement, parameters)
        rows = cursor.fetchall()
    return "\n".join(str(row[-1]) for row in rows)


def generic_plan_of(
    app: Flask, statement: str, parameters: dict[str, Any], settings: Sequence[str] = ()
) -> str:
    """PostgreSQL's generic plan of a statement: the plan a prepared statement keeps
    once PostgreSQL prefers it (what a worker's claim runs with after a few claims)."""
    names: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    prepared = re.sub(r"%\((\w+)\)s", placeholder, statement)
    values = sql.SQL(", ").join(sql.Literal(parameters[name]) for name in names)
    with driver_cursor(app) as cursor:
        for setting in settings:
            cursor.execute(setting)
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute(f"PREPARE generic AS {prepared}")
        cursor.execute(sql.SQL("EXPLAIN EXECUTE generic({})").format(values))
        rows = cursor.fetchall()
        cursor.execute("DEALLOCATE generic")
    return "\n".join(str(row[-1]) for row in rows)


def table_scans(plan: str) -> list[str]:
    """The lines of a plan that read a whole table or sort many rows."""
    whole_table = (
        "Seq Scan on queue_items",
        "Seq Scan on documents",
        "Seq Scan on queue_attempts",
        "USE TEMP B-TREE",
    )
    bad = [line for line in plan.splitlines() if any(word in line for word in whole_table)]
    # PostgreSQL: a Sort reads all its input first. (An Incremental Sort of rows
    # an index returns in run_at order only orders the ties of one run_at.)
    bad += [line for line in plan.splitlines() if re.match(r"\s*(->\s*)?Sort\s+\(", line)]
    # SQLite: "SCAN t" reads every row of table t (a "SEARCH" reads a range of an
    # index; "SCAN (subquery-n)" or "SCAN anon_n", as SQLAlchemy names a subquery,
    # reads the few rows a subquery produced, and a VIRTUAL TABLE is json_each
    # reading a batch passed as one parameter).
    bad += [
        line
        for line in plan.splitlines()
        if re.match(r"\s*SCAN (?!\(|CONSTANT ROW|anon_\d+$)", line) and "VIRTUAL TABLE" not in line
    ]
    # An index searched by status alone reads every pending row (PostgreSQL may
    # rightly search it for the few in_progress ones: one batch per worker).
    bad += [line for line in plan.splitlines() if re.search(r"\(status=\?\)$", line)]
    bad += [line for line in plan.splitlines() if "Index Cond: ((status)::text = 'pending'" in line]
    return bad


def queue_statements_sent(app: Flask, action: Callable[[], Any]) -> list[tuple[str, Any, list]]:
    """The statements ``action`` runs that read queue tables (read at the driver:
    PostgreSQL's claim runs on the driver's connection), each as (statement,
    parameters, the planner settings its transaction made before it)."""
    with statements_run(app) as sent:
        action()
    queue_statements = []
    settings: list[str] = []
    for statement, parameters in sent:
        if statement.strip().upper() in ("BEGIN", "COMMIT", "ROLLBACK"):
            settings = []
        elif "set_config(" in statement:
            settings.append(statement)
        elif "queue_items" in statement or "documents" in statement:
            queue_statements.append((statement, parameters, list(settings)))
    assert queue_statements, "the action sent no statement to the queue tables"
    return queue_statements


def plans_of(app: Flask, action: Callable[[], Any]) -> list[str]:
    """The plans of the statements ``action`` runs that read queue tables."""
    queue_statements = queue_statements_sent(app, action)
    plans = [plan_of(app, *sent_with_settings) for sent_with_settings in queue_statements]
    # A worker's claim runs with its generic plan once PostgreSQL prefers it.
    plans += [
        generic_plan_of(app, *sent_with_settings)
        for sent_with_settings in queue_statements
        if "WITH claimed AS" in sent_with_settings[0]
    ]
    return plans


def in_service(app: Flask, call: Callable[[DocumentQueueService], Any]) -> Callable[[], Any]:
    def action() -> Any:
        with app.app_context():
            return call(DocumentQueueService())

    return action


def test_an_idle_poll_over_a_backlog_reads_only_index_ranges(app: Flask) -> None:
    add_items(app, BACKLOG, due_in=timedelta(days=1))

    claim = in_service(app, lambda service: service.claim_due_items(10, "w"))
    plans = plans_of(app, claim)

    assert claim() == []
    for plan in plans:
        assert table_scans(plan) == [], plan


@pytest.mark.parametrize("limit", [10, 100])
@pytest.mark.parametrize("look_first", [True, False], ids=["polled", "woken"])
def test_a_claim_over_a_backlog_reads_only_index_ranges(
    app: Flask, look_first: bool, limit: int
) -> None:
    add_items(app, BACKLOG, due_in=timedelta(days=1))
    add_items(app, 30, due_in=-timedelta(minutes=1), first=BACKLOG + 1)

    claim = in_service(app, lambda service: service.claim_due_items(limit, "w", look_first))
    plans = plans_of(app, claim)

    # PostgreSQL claims, opens the attempts and follows the documents in one
    # statement; SQLite sends each on its own. A woken claim does not look first.
    assert len(plans) >= 1 + look_first
    for plan in plans:
        assert table_scans(plan) == [], plan


@contextmanager
def statistics_claiming_few_documents(app: Flask) -> Iterator[None]:
    """PostgreSQL's statistics say queue_items holds the items of ten documents."""
    if backend_name(app) != "postgresql":
        yield
        return
    execute_sql(app, "ALTER TABLE queue_items ALTER COLUMN document_id SET (n_distinct = 10)")
    execute_sql(app, "ANALYZE queue_items")
    try:
        yield
    finally:
        execute_sql(app, "ALTER TABLE queue_items ALTER COLUMN document_id RESET (n_distinct)")
        execute_sql(app, "ANALYZE queue_items")


@pytest.mark.parametrize("limit", [10, 100])
@pytest.mark.parametrize("statistics", ["none-yet", "few-documents"])
def test_claims_and_outcomes_read_only_index_ranges_when_the_statistics_mislead(
    app: Flask, limit: int, statistics: str
) -> None:
    # The plans of the latest item of a claimed document, as PostgreSQL's planner
    # made them when its statistics were wrong:
    # - none yet (a bulk import not yet analyzed): it took queue_items for a small
    #   table and hashed all of it, once per claim;
    # - a few items per document: it walked the primary key down from the newest
    #   item until it met one of that document, through half the table on average.
    add_items(app, 300, due_in=-timedelta(minutes=1), analyze=False)
    add_items(app, BACKLOG, due_in=timedelta(days=1), first=301, analyze=False)
    misleading = (
        statistics_claiming_few_documents(app) if statistics == "few-documents" else nullcontext()
    )

    with misleading:
        claim = in_service(app, lambda service: service.claim_due_items(limit, "w", False))
        plans = plans_of(app, claim)
        with app.app_context():
            items = DocumentQueueService().claim_due_items(limit, "w", False)
            outcomes = [Outcome.success(item, {"text": f"text {item.id}"}) for item in items]
        plans += plans_of(app, in_service(app, lambda service: service.record_outcomes(outcomes)))

    for plan in plans:
        assert whole_table_reads(plan) == [], plan


def add_history_then_a_backlog(
    app: Flask, history: int, backlog: int, due_in: timedelta = -timedelta(minutes=1)
) -> None:
    """``history`` finished items (each with its attempt), whose statistics were taken
    (as autovacuum takes them) while none was pending; then ``backlog`` items due in
    ``due_in``, which they have not seen."""
    add_items(app, history, due_in=-timedelta(hours=1), analyze=False)
    for statement in FINISH_EVERY_ITEM:
        execute_sql(app, statement)
    execute_sql(app, "ANALYZE")
    add_items(app, backlog, due_in=due_in, first=history + 1, analyze=False)


@pytest.mark.parametrize("limit", [10, 100])
@pytest.mark.parametrize("look_first", [True, False], ids=["polled", "woken"])
def test_a_claim_of_a_burst_walks_the_claim_index_when_the_statistics_saw_an_idle_queue(
    app: Flask, look_first: bool, limit: int
) -> None:
    # Statistics taken while every item was finished say that none is pending.
    # Believing them, PostgreSQL read every due item of the burst through
    # ix_queue_items_due and sorted them, once per priority at each claim: a drain
    # of 10,000 uploads onto 200,000 finished items ran 5-7 times slower than onto
    # an empty table (bench/history_drain.py).
    add_history_then_a_backlog(app, BACKLOG, 3_000)

    claim = in_service(app, lambda service: service.claim_due_items(limit, "w", look_first))
    plans = plans_of(app, claim)
    claimed = claim()
    outcomes = [Outcome.success(item, {"text": f"text {item.id}"}) for item in claimed]
    plans += plans_of(app, in_service(app, lambda service: service.record_outcomes(outcomes)))

    assert len(claimed) == limit
    for plan in plans:
        assert table_scans(plan) == [], plan


@pytest.mark.parametrize("limit", [1, 7])
def test_listing_the_due_of_a_burst_walks_the_claim_index_when_statistics_saw_an_idle_queue(
    app: Flask, limit: int
) -> None:
    add_history_then_a_backlog(app, BACKLOG, 3_000)

    listing = in_service(app, lambda service: service.get_pending_items(limit))
    plans = plans_of(app, listing)
    with app.app_context():
        service = DocumentQueueService()
        listed = [item.id for item in service.get_pending_items(limit)]
        claimed = [item.id for item in service.claim_due_items(limit, "w", False)]

    assert listed == claimed  # what a claim takes, in the order it takes them
    for plan in plans:
        assert table_scans(plan) == [], plan


def test_an_idle_poll_over_a_backlog_reads_only_index_ranges_when_the_statistics_saw_an_idle_queue(
    app: Flask,
) -> None:
    # Retries waiting out their backoff, after statistics that saw none pending:
    # PostgreSQL looked for a due item by reading every pending one through
    # uq_queue_items_pending_document, at every poll.
    add_history_then_a_backlog(app, BACKLOG, BACKLOG, due_in=timedelta(days=1))

    claim = in_service(app, lambda service: service.claim_due_items(10, "w"))
    plans = plans_of(app, claim)

    assert claim() == []
    for plan in plans:
        assert table_scans(plan) + whole_index_reads(plan) == [], plan


def whole_index_reads(plan: str) -> list[str]:
    """The index scans of a plan (PostgreSQL's) that read all of a queue_items index:
    no Index Cond bounds them."""
    lines = plan.splitlines()
    scans = [
        number
        for number, line in enumerate(lines)
        if re.search(r"Index (Only )?Scan using \w+ on queue_items", line)
    ]
    unbounded = []
    for number in scans:
        details = itertools.takewhile(lambda line: "->" not in line, lines[number + 1 :])
        if not any("Index Cond" in line for line in details):
            unbounded.append(lines[number])
    return unbounded


def whole_table_reads(plan: str) -> list[str]:
    """The lines of a plan that read all of queue_items, or may: a scan of the table,
    or its primary key walked from one end for the first row that passes a filter."""
    reads = ("Seq Scan on queue_items", "Index Scan Backward using queue_items_pkey")
    return [line for line in plan.splitlines() if any(read in line for read in reads)]


def test_a_claim_of_a_hundred_among_many_due_finds_what_it_claims_by_id(app: Flask) -> None:
    # With "id IN (subquery)", PostgreSQL's planner hashed the hundred chosen ids
    # and read all of queue_items to find them.
    add_items(app, BACKLOG, due_in=timedelta(days=1))
    add_items(app, 300, due_in=-timedelta(minutes=1), first=BACKLOG + 1)

    claim = in_service(app, lambda service: service.claim_due_items(100, "w", False))
    plans = plans_of(app, claim)

    for plan in plans:
        assert "Seq Scan on queue_items" not in plan, plan
        assert not re.search(r"SCAN queue_items(?! USING)", plan), plan


def test_due_items_among_thousands_not_yet_due_are_claimed_highest_priority_first(
    app: Flask,
) -> None:
    add_items(app, 5_000, due_in=timedelta(hours=1))
    add_items(app, 22, due_in=-timedelta(minutes=5), first=5_001)  # two due of each priority

    def claim(count: int) -> list[int]:
        with app.app_context():
            items = DocumentQueueService().claim_due_items(count, "w")
            return [item.priority for item in items]

    first, second, rest = claim(3), claim(5), claim(100)

    assert first == [10, 10, 9]
    assert second == [9, 8, 8, 7, 7]
    assert rest == [p for p in reversed(PRIORITIES) if p < 7 for _ in range(2)]
    assert claim(100) == []
    with app.app_context():
        pending = db.session.scalar(db.select(db.func.count()).where(QueueItem.status == "pending"))
    assert pending == 5_000


@pytest.mark.parametrize("limit", [1, 7])
def test_listing_due_items_follows_claim_order_over_a_backlog(app: Flask, limit: int) -> None:
    add_items(app, 2_000, due_in=timedelta(hours=1))
    add_items(app, 11, due_in=-timedelta(minutes=5), first=2_001)  # one due of each priority

    with app.app_context():
        listed = DocumentQueueService().get_pending_items(limit)
        priorities = [item.priority for item in listed]

    assert priorities == list(reversed(PRIORITIES))[:limit]


def test_recording_outcomes_over_a_backlog_reads_only_index_ranges(app: Flask) -> None:
    add_items(app, BACKLOG, due_in=timedelta(days=1))
    add_items(app, 30, due_in=-timedelta(minutes=1), first=BACKLOG + 1)
    # A history as long as the backlog: one finished attempt per item.
    execute_sql(
        app,
        "INSERT INTO queue_attempts (queue_item_id, attempt, worker, started_at, finished_at,"
        " outcome) SELECT id, 1, 'w', :now, :now, 'failed' FROM queue_items",
        now=utcnow(),
    )
    if backend_name(app) == "postgresql":
        execute_sql(app, "ANALYZE")
    with app.app_context():
        items = DocumentQueueService().claim_due_items(10, "w")
        outcomes = [Outcome.success(item, {"text": f"text {item.id}"}) for item in items]

    record = in_service(app, lambda service: service.record_outcomes(outcomes))
    plans = plans_of(app, record)

    with app.app_context():
        completed = db.session.scalar(
            db.select(db.func.count()).where(QueueItem.status == "completed")
        )
    assert completed == 10
    for plan in plans:
        assert table_scans(plan) == [], plan


@pytest.fixture
def postgresql_app(postgresql_clean: str) -> Iterator[Flask]:
    with app_factory(postgresql_clean) as factory:
        yield factory()


def plan_choices(app: Flask, statement: str, parameters: Any, runs: int) -> tuple[int, int]:
    """(generic, custom) plans PostgreSQL made for ``statement`` prepared once on one
    connection and run ``runs`` times there, as a worker runs its claim (psycopg
    prepares a statement it has run five times); rolled back after."""
    with driver_cursor(app) as cursor:
        for _ in range(runs):
            cursor.execute(statement, parameters, prepare=True)
        cursor.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE '%%WITH claimed AS%%'"
        )
        (choices,) = cursor.fetchall()
    return choices


@pytest.mark.parametrize("limit", [10, 100])
def test_a_worker_s_claim_is_planned_once_not_at_every_claim(
    postgresql_app: Flask, limit: int
) -> None:
    # With its LIMIT a parameter, the claim's generic plan looked dearer to
    # PostgreSQL than a plan made for the values (it guesses a tenth of the
    # table for an unknown LIMIT), so it planned the claim again at each call:
    # 0.4-0.5 ms of planning beside 0.5-0.9 ms of running a claim of 10.
    app = postgresql_app
    add_items(app, BACKLOG, due_in=-timedelta(minutes=1))  # a drain: all of it due
    with statements_run(app) as sent:
        in_service(app, lambda service: service.claim_due_items(limit, "w", False))()
    [(statement, parameters)] = [sql for sql in sent if "WITH claimed AS" in sql[0]]

    generic, custom = plan_choices(app, statement, parameters, runs=20)

    # PostgreSQL makes five custom plans before it weighs the generic one.
    assert (generic, custom) == (15, 5)


def test_a_claim_that_fails_leaves_no_transaction_open_on_its_connection(
    postgresql_app: Flask,
) -> None:
    # The claim's transaction is BEGIN, its settings, the claim and COMMIT sent at
    # once: when the claim fails, the COMMIT never runs.
    app = postgresql_app
    add_items(app, 30, due_in=-timedelta(minutes=1))
    execute_sql(app, "ALTER TABLE queue_state RENAME TO queue_state_away")
    try:
        with app.app_context(), pytest.raises(ProgrammingError, match="queue_state"):
            DocumentQueueService().claim_due_items(10, "w", look_first=False)
    finally:
        execute_sql(app, "ALTER TABLE queue_state_away RENAME TO queue_state")

    with app.app_context():
        claims = [DocumentQueueService().claim_due_items(10, "w", False) for _ in range(3)]
        in_transaction = db.session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
                " AND datname = current_database()"
            )
        )

    assert [len(claimed) for claimed in claims] == [10, 10, 10]
    assert in_transaction == 0
