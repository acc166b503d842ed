"""The queue's SQL, in one place: what each statement selects, claims or writes.

SQLAlchemy Core builders over ``queue_items`` (and the rows that follow them:
attempt history, document status). ``DocumentQueueService`` runs them inside its
transactions, so the service reads as transactions and transitions and the
queue's whole behaviour in the database can be read here.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Delete,
    Integer,
    Select,
    TextualSelect,
    Update,
    and_,
    bindparam,
    case,
    delete,
    exists,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import aliased

from ..models import (
    QUEUE_STATE_ID,
    Document,
    QueueAttempt,
    QueueItem,
    QueueState,
    UTCDateTime,
    utcnow,
)
from ..states import (
    DOCUMENT_STATUS_OF_ITEM,
    MAX_PRIORITY,
    MIN_PRIORITY,
    AttemptOutcome,
    DocumentStatus,
    ItemStatus,
)
from .retry import Decision

# -- which items ----------------------------------------------------------------


def due_items(now: datetime | ColumnElement[datetime]) -> Select:
    """Ids of claimable items, in no particular order: to claim one chosen item by its id.

    Claimable: pending, due, and no other item of its document in progress (two
    items of one document never run at once). Batches are chosen by
    ``claimable_batch``, and "is anything due?" asked by ``poll``.
    """
    busy = aliased(QueueItem)
    document_busy = exists().where(
        busy.document_id == QueueItem.document_id,
        busy.status == ItemStatus.IN_PROGRESS,
    )
    return select(QueueItem.id).where(
        QueueItem.status == literal(ItemStatus.PENDING.value, literal_execute=True),
        QueueItem.run_at <= now,
        ~document_busy,
    )


# Pending item q is due and no other item of its document is in progress. The
# statuses are written in the SQL, not bound: a partial index only serves a
# query whose WHERE visibly implies the index's.
_DUE = """q.status = 'pending' AND q.run_at <= {now}
      AND NOT EXISTS (
        SELECT 1 FROM queue_items AS busy
        WHERE busy.document_id = q.document_id AND busy.status = 'in_progress')"""


def _claimable_of_priority(
    priority: object,
    index_hint: str = "",
    locking: str = "",
    now: str = ":now",
    limit: str = ":limit",
) -> str:
    """One priority's claimable items, oldest first, as SQL.

    A range scan of ix_queue_items_claim (priority = p, run_at <= now): O(log n
    + k) however many items of that priority are not yet due. The ORDER BY is
    the index's own, so that PostgreSQL sees it needs no sort.
    """
    return f"""
    SELECT q.id FROM queue_items AS q {index_hint}
    WHERE q.priority = {priority} AND {_DUE.format(now=now)}
    ORDER BY q.priority DESC, q.run_at, q.id LIMIT {limit} {locking}"""


def _postgresql_claimable(
    locking: str, now: str = ":now", condition: str = "TRUE", limit: str = ":limit"
) -> str:
    """The priorities walked from the highest, stopping once ``limit`` rows are found."""
    walk = _claimable_of_priority("p", locking=locking, now=now, limit=limit)
    return f"""
    SELECT due.id FROM generate_series({MAX_PRIORITY}, {MIN_PRIORITY}, -1) AS p
    CROSS JOIN LATERAL ({walk}) AS due
    WHERE {condition}
    LIMIT {limit}"""


def _sqlite_claimable() -> str:
    """The same walk on SQLite: one UNION ALL arm per priority, run in order.

    Each arm names its index (SQLAlchemy's SQLite compiler drops table hints,
    hence SQL text): without statistics SQLite would rather sort the backlog.
    """
    hint = "INDEXED BY ix_queue_items_claim"
    arms = [
        f"SELECT id FROM ({_claimable_of_priority(priority, index_hint=hint)})"
        for priority in range(MAX_PRIORITY, MIN_PRIORITY - 1, -1)
    ]
    return "SELECT id FROM (" + "\n    UNION ALL ".join(arms) + ")\nLIMIT :limit"


_SQLITE_CLAIMABLE = _sqlite_claimable()
_POSTGRESQL_CLAIMABLE = _postgresql_claimable("")


def _poll(now: str, due_hint: str = "", lease_hint: str = "") -> str:
    # Each question is the first row in the order of the index that answers it:
    # under models.walk_indexes that index is the one PostgreSQL reads. (Not
    # EXISTS, whose ORDER BY and LIMIT PostgreSQL drops.)
    return f"""
    SELECT {now} AS now,
      (SELECT paused FROM queue_state WHERE id = {QUEUE_STATE_ID}) AS paused,
      (SELECT q.lease_expires_at FROM queue_items AS q {lease_hint}
       WHERE q.status = 'in_progress' AND q.lease_expires_at <= {now}
       ORDER BY q.lease_expires_at LIMIT 1) IS NOT NULL AS lost,
      (SELECT q.run_at FROM queue_items AS q {due_hint} WHERE {_DUE.format(now=now)}
       ORDER BY q.run_at LIMIT 1) IS NOT NULL AS due"""


_POLL_SQL = {
    # SQLite: this host's clock, and the indexes named (without statistics it
    # would read every pending row through the status index instead).
    "sqlite": _poll(":now", "INDEXED BY ix_queue_items_due", "INDEXED BY ix_queue_items_lease"),
    "postgresql": _poll("now()"),
}


def poll(dialect: str) -> TextualSelect:
    """The look before a claim, in one statement: now, paused, any lease expired, any due.

    The time is the database's (PostgreSQL's now(), or SQLite's host clock);
    each question is answered from an index range in O(log n), on PostgreSQL
    when run under ``models.walk_indexes``.
    """
    statement = text(_POLL_SQL[dialect])
    if dialect == "sqlite":
        statement = statement.bindparams(bindparam("now", utcnow(), type_=UTCDateTime))
    return statement.columns(now=UTCDateTime, paused=Boolean, lost=Boolean, due=Boolean)


def claimable_batch(dialect: str, now: datetime, limit: int) -> TextualSelect:
    """Ids of up to ``limit`` claimable items: the highest priorities, oldest first.

    The result's rows are in no guaranteed order; which rows they are is. A
    read: the claims walk the same index in statements of their own
    (``claim_batch_postgresql``, ``claim_batch_sqlite``).
    """
    sql = _SQLITE_CLAIMABLE if dialect == "sqlite" else _POSTGRESQL_CLAIMABLE
    return (
        text(sql)
        .bindparams(bindparam("now", now, type_=UTCDateTime), bindparam("limit", limit))
        .columns(id=Integer)
    )


_Item = TypeVar("_Item")  # a QueueItem, or a claim's ClaimedItem


def in_claim_order(items: Iterable[_Item]) -> list[_Item]:
    """Items as they are claimed: highest priority first, then oldest, then first queued."""
    return sorted(items, key=lambda item: (-item.priority, item.run_at, item.id))


def expired_leases(now: datetime | ColumnElement[datetime]) -> Select:
    """Ids of items whose worker stopped extending its lease: dead, hung or cut off."""
    return select(QueueItem.id).where(
        QueueItem.status == ItemStatus.IN_PROGRESS, QueueItem.lease_expires_at <= now
    )


def held_by(item_id: int, claim: Any) -> ColumnElement[bool]:
    """The fencing check: the item is still in progress under this claim (``service.Claim``:
    the worker, the attempt and the claim's time, which tells apart two claims of one
    worker with one attempt number, as a retry's reset of attempts makes them)."""
    if claim.started_at is None:
        return false()  # a held item always has the time of its claim
    return and_(
        QueueItem.id == item_id,
        QueueItem.status == ItemStatus.IN_PROGRESS,
        QueueItem.locked_by == claim.worker,
        QueueItem.attempts == claim.attempt,
        QueueItem.started_at == claim.started_at,
    )


def held_by_any(claims: Iterable[tuple[int, str, int, datetime | None]]) -> ColumnElement[bool]:
    """``held_by`` for many (item id, worker, attempt, started_at) claims at once."""
    return and_(
        QueueItem.status == ItemStatus.IN_PROGRESS,
        tuple_(QueueItem.id, QueueItem.locked_by, QueueItem.attempts, QueueItem.started_at).in_(
            [claim for claim in claims if claim[3] is not None]
        ),
    )


def is_latest_of_its_document() -> ColumnElement[bool]:
    """No newer item of the same document: this item's status is the document's."""
    newer = aliased(QueueItem)
    return ~exists().where(newer.document_id == QueueItem.document_id, newer.id > QueueItem.id)


def lock_documents(document_ids: list[int]) -> Select:
    """Lock these documents for an update (in id order, as every writer takes them),
    waiting for any transaction that writes one to end. ``FOR NO KEY UPDATE``, the
    lock an UPDATE takes: inserts that refer to the documents go on meanwhile."""
    return (
        select(Document.id)
        .where(Document.id.in_(document_ids))
        .order_by(Document.id)
        .with_for_update(key_share=True)
    )


def updated_at_locked(document_id: int) -> Select:
    """When the document last changed, the row locked until the transaction ends."""
    return (
        select(Document.updated_at)
        .where(Document.id == document_id)
        .with_for_update(key_share=True)
    )


def pending_item_of(document_id: int) -> Select:
    """The document's one not-yet-started item, locked, if it has one."""
    return (
        select(QueueItem)
        .where(QueueItem.document_id == document_id, QueueItem.status == ItemStatus.PENDING)
        .with_for_update()
    )


def finished_before(cutoff: datetime, statuses: Iterable[ItemStatus], limit: int) -> Select:
    """Ids of up to ``limit`` finished items of these statuses older than ``cutoff``.

    A document's latest item goes only together with all its older items: until
    then it is what the document's status says, and an older item would become
    the latest and contradict it. A document whose items all go keeps its status
    and shows no queue item (SPEC §4).
    """
    return (
        select(QueueItem.id)
        .where(*_purgeable(cutoff, statuses, QueueItem.status))
        .order_by(QueueItem.id)
        .limit(limit)
    )


def _purgeable(
    cutoff: datetime, statuses: Iterable[ItemStatus], status: ColumnElement[Any]
) -> tuple[ColumnElement[bool], ...]:
    """What ``finished_before`` asks of an item; ``status`` is how its status is read."""
    statuses = list(statuses)
    older = aliased(QueueItem)
    an_older_item_stays = exists().where(
        older.document_id == QueueItem.document_id,
        older.id < QueueItem.id,
        or_(
            older.status.not_in(statuses),
            older.finished_at.is_(None),
            older.finished_at >= cutoff,
        ),
    )
    return (
        status.in_(statuses),
        QueueItem.finished_at < cutoff,
        or_(~is_latest_of_its_document(), ~an_older_item_stays),
    )


def purgeable_ids(cutoff: datetime, statuses: Iterable[ItemStatus]) -> Select:
    """The lowest and highest id of the items a purge may take (None, None if none):
    its batches walk the ids between, each from where the one before it stopped."""
    return select(func.min(QueueItem.id), func.max(QueueItem.id)).where(
        QueueItem.status.in_(list(statuses)), QueueItem.finished_at < cutoff
    )


def purge_batch(
    cutoff: datetime,
    statuses: Iterable[ItemStatus],
    after_id: int,
    up_to_id: int,
    dialect: str,
) -> Delete:
    """Delete the items ``finished_before`` would choose among the ids past ``after_id``
    up to ``up_to_id``; the ids deleted. Their history goes with them (the foreign
    key's ON DELETE CASCADE).

    A batch reads the primary key's entries of its range and no other: chosen by
    ORDER BY id LIMIT over all the ids, each batch read again every item the purge
    keeps, or read every item left and sorted them, so the purge slowed as it went.
    SQLite is kept off the status index (the unary +), which it preferred, sorting
    what it found; PostgreSQL runs it without bitmap scans (``_delete_older_than``).
    On PostgreSQL the DELETE locks each row and checks it again once the lock is granted: a retry
    that made an item pending meanwhile wins.
    """
    status = literal_column("+queue_items.status") if dialect == "sqlite" else QueueItem.status
    return (
        delete(QueueItem)
        .where(
            QueueItem.id > after_id,
            QueueItem.id <= up_to_id,
            *_purgeable(cutoff, statuses, status),
        )
        .returning(QueueItem.id)
        .execution_options(synchronize_session=False)
    )


# -- claiming -------------------------------------------------------------------


def claim(ids: Any, worker: str, now: datetime, lease: timedelta) -> Update:
    """The one claim statement: the given due items become in progress under ``worker``.

    ``ids`` is a locking query of one chosen item of ``due_items``; a claim counts
    an attempt and starts a lease. Batches are claimed by ``claim_batch_postgresql``
    and ``claim_batch_sqlite``.
    """
    return (
        update(QueueItem)
        # No condition of its own here: PostgreSQL would then run the subquery
        # once per row and, as it skips the rows it just claimed, claim past
        # its LIMIT. The subquery's FOR UPDATE SKIP LOCKED keeps claims apart.
        .where(QueueItem.id.in_(ids))
        .values(
            status=ItemStatus.IN_PROGRESS,
            locked_by=worker,
            lease_expires_at=now + lease,
            attempts=QueueItem.attempts + 1,
            started_at=now,
            finished_at=None,
        )
        # The claimed items themselves, as they are now: no second query to load them.
        .returning(QueueItem)
        .execution_options(synchronize_session=False, populate_existing=True)
    )


def latest_item_id(document_id: Any) -> Select:
    """The id of the newest item of a document, looked up in the document's index
    entries, whatever the statistics say.

    Two other plans were seen when PostgreSQL's statistics were wrong, each reading
    queue_items whole: for NOT EXISTS (a newer item), a hash of the table, when no
    statistics yet made it look small; for a plain max(id), the primary key walked
    down from the newest item to the first of that document, when they said each
    document had many items. The GROUP BY rules the latter out: PostgreSQL answers
    max() from an ordered index only when there is none.
    """
    return (
        select(func.max(QueueItem.id))
        .where(QueueItem.document_id == document_id)
        .group_by(QueueItem.document_id)
    )


def _latest_item_of(document_id: str) -> str:
    """``latest_item_id`` as SQL text, for the CTEs written as text."""
    return f"""(
    SELECT max(q.id) FROM queue_items AS q WHERE q.document_id = {document_id}
    GROUP BY q.document_id)"""


_NOT_PAUSED = f"NOT COALESCE((SELECT paused FROM queue_state WHERE id = {QUEUE_STATE_ID}), FALSE)"


# A batch claim's three writes, as SQL text shared by both back ends' claims: the
# items, then (reading the claimed rows from ``claimed``) their attempts and documents.
def _claiming(now: str, expires: str, worker: str = ":worker") -> str:
    """The SET of a claim: in progress under the worker, an attempt counted, a lease started."""
    return f"""status = '{ItemStatus.IN_PROGRESS.value}', locked_by = {worker},
    lease_expires_at = {expires}, attempts = queue_items.attempts + 1, started_at = {now},
    finished_at = NULL"""


def _opening_attempts(claimed: str) -> str:
    """Each claimed item opens its attempt's history row."""
    return f"""INSERT INTO queue_attempts (queue_item_id, attempt, worker, started_at)
  SELECT id, attempts, locked_by, started_at FROM {claimed}"""


def _showing_processing(claimed: str, now: str) -> str:
    """Each document whose latest item was claimed shows it processing."""
    return f"""UPDATE documents SET status = '{DocumentStatus.PROCESSING.value}', error = NULL,
    updated_at = {now}
  FROM {claimed}
  WHERE documents.id = claimed.document_id
    AND claimed.id = {_latest_item_of("claimed.document_id")}"""


# PostgreSQL's whole claim in one statement (one round trip, where the claim,
# the attempts and the documents' status were three, and the poll a fourth):
# up to ``limit`` claimable items become in progress under :worker, each opens
# its attempt's history row, and each document whose latest item it is shows
# it processing. Nothing is claimed while the queue is paused, so a claim needs
# no poll before it. The ids come as an array computed once (an InitPlan):
# with "IN (subquery)" the planner may hash the subquery's ids and read the
# whole table to find them.
#
# The limit is written in the text, not bound: with an unknown LIMIT,
# PostgreSQL's generic plan of a prepared claim guesses a tenth of the due rows
# and looks dearer than a plan made for the values, so each claim was planned
# anew: 0.4-0.5 ms of planning beside 0.5-0.9 ms of running a claim of 10
# (EXPLAIN ANALYZE). A worker claims with one batch size, so its claim is one
# prepared statement, planned once.
#
# In psycopg's placeholders: the claim runs on the driver's connection
# (``run_on_driver``). Through SQLAlchemy's execution and the ORM's loading, a
# claim of 10 cost 2.3 ms of the worker's CPU, on the driver 0.6 ms.
@functools.lru_cache(maxsize=16)
def _claim_batch_sql(limit: int) -> str:
    claimable = _postgresql_claimable(
        "FOR UPDATE OF q SKIP LOCKED", now="now()", condition=_NOT_PAUSED, limit=str(int(limit))
    )
    claiming = _claiming("now()", "now() + %(lease_seconds)s * interval '1 second'", "%(worker)s")
    return f"""
WITH claimed AS (
  UPDATE queue_items SET {claiming}
  WHERE queue_items.id = ANY(ARRAY({claimable}))
  RETURNING queue_items.*
), opened AS (
  {_opening_attempts("claimed")}
), followed AS (
  {_showing_processing("claimed", "now()")}
)
SELECT claimed.*, d.callback_url IS NOT NULL AS document_has_callback,
  d.size AS document_size,
  CASE WHEN d.size <= %(bytes_up_to)s THEN c.data END AS document_data,
  d.filename AS document_filename, d.content_type AS document_content_type
FROM claimed
LEFT JOIN documents AS d ON d.id = claimed.document_id
LEFT JOIN document_contents AS c ON c.document_id = claimed.document_id"""


# The columns a PostgreSQL claim adds after the claimed item's, a ``ClaimedDocument``.
CLAIMED_DOCUMENT_COLUMNS = 4


def claim_batch_postgresql(
    limit: int, worker: str, lease: timedelta, bytes_up_to: int
) -> tuple[str, dict[str, Any]]:
    """PostgreSQL: claim up to ``limit`` due items in one statement, which selects them,
    each with whether its document has a callback_url (as SQLite's claim says it) and
    the document's size, bytes (when no larger than ``bytes_up_to``) and names (the
    last ``CLAIMED_DOCUMENT_COLUMNS``).

    The statement, for the driver, and its parameters.
    """
    return _claim_batch_sql(limit), {
        "worker": worker,
        "lease_seconds": lease.total_seconds(),
        "bytes_up_to": bytes_up_to,
    }


# SQLite's claim, the same writes as PostgreSQL's in three statements (it has no
# data-modifying CTEs), run on the driver's connection like PostgreSQL's: the
# claimable ids (the walk of ix_queue_items_claim) become in progress under
# :worker unless the queue is paused, and come back as they are now; attempts and
# documents follow in the same transaction, reading the claimed ids from the JSON
# array :ids. Timestamps are bound as the ORM stores them (``UTCDateTime``). Each
# item comes back with whether its document has a callback_url, as PostgreSQL's
# does: a record of successes that owes no webhook then runs on the driver.
_SQLITE_CLAIM_BATCH = f"""
UPDATE queue_items SET {_claiming(":now", ":expires")}
WHERE id IN ({_SQLITE_CLAIMABLE}) AND {_NOT_PAUSED}
RETURNING *, (SELECT callback_url IS NOT NULL FROM documents
  WHERE documents.id = queue_items.document_id) AS document_has_callback"""
_SQLITE_CLAIMED = (
    "(SELECT * FROM queue_items WHERE id IN (SELECT value FROM json_each(:ids))) AS claimed"
)
_SQLITE_FOLLOW_CLAIMS = (
    _opening_attempts(_SQLITE_CLAIMED),
    _showing_processing(_SQLITE_CLAIMED, ":now"),
)


def claim_batch_sqlite(
    limit: int, worker: str, now: str, expires: str
) -> tuple[str, dict[str, Any]]:
    """SQLite: claim up to ``limit`` due items at ``now`` (nothing while the queue is
    paused); selects the claimed items. The statement, for the driver, and its
    parameters; ``follow_claims_sqlite`` then records what the claim opened."""
    return _SQLITE_CLAIM_BATCH, {"limit": limit, "worker": worker, "now": now, "expires": expires}


def follow_claims_sqlite(item_ids: Sequence[int], now: str) -> list[tuple[str, dict[str, Any]]]:
    """SQLite: the claimed items' attempts opened and their documents processing
    (statements for the driver and their parameters, to run in the claim's transaction)."""
    ids = json.dumps(list(item_ids))
    return [(statement, {"ids": ids, "now": now}) for statement in _SQLITE_FOLLOW_CLAIMS]


def extend_lease(item_id: int, claim: Any, expires: datetime) -> Update:
    return (
        update(QueueItem)
        .where(held_by(item_id, claim))
        .values(lease_expires_at=expires)
        .execution_options(synchronize_session=False)
    )


# -- ending an attempt ----------------------------------------------------------


def _document_status_of(item_status: str) -> str:
    """SQL: the document status an item's status means (``DOCUMENT_STATUS_OF_ITEM``)."""
    whens = " ".join(
        f"WHEN '{item.value}' THEN '{document.value}'"
        for item, document in DOCUMENT_STATUS_OF_ITEM.items()
    )
    return f"CASE {item_status} {whens} END"


# The result columns an outcome may carry: (name, its type as PostgreSQL names it).
_RESULT_COLUMNS = (
    ("text", "text"),
    ("title", "text"),
    ("page_count", "integer"),
    ("metadata", "json"),
    ("word_count", "integer"),
    ("char_count", "integer"),
)

# PostgreSQL's record of many successes in one statement, where it took three
# plus one UPDATE per document (each finding the document's latest item): the
# items still held under their claims become completed, their attempts' history
# rows close, and each document takes its result (if the outcome has one) and
# the status of its latest item. The batch travels as one JSON parameter, as on
# SQLite: psycopg dumped ten arrays in Python, a quarter of the record's CPU
# (cProfile, outcomes of 10). Its text is the same for any batch, so psycopg
# prepares it once per connection, and it runs on the driver (``run_on_driver``).
#
# The parts of one statement all read the rows as they were before it: the
# document's latest item is either the one completed here (then "completed") or
# a newer one this statement does not touch. Of two items of one document
# completed together, the newer one speaks for it.
#
# Except for a reprocess that commits while the statement runs: the statement
# waits for the document row it holds, then updates the row's newest version
# with what it read before (PostgreSQL's READ COMMITTED), which does not show
# the new item, and the document said "completed" while its reprocess waited.
# So when the row changed under the statement (its xmin is not the one `seen`
# read), its status and error stay as that writer, which saw the newer item,
# left them; the result columns are written all the same. Only a newer item's
# enqueue writes a document while one of its items is held (a cancel or a
# rescue of the item ends its claim, and this statement then skips it).
_POSTGRESQL_COMPLETE_BATCH = f"""
WITH outcome AS (
  SELECT * FROM json_to_recordset(CAST(%(outcomes)s AS json)) AS o(
    id integer, worker text, attempt integer, started_at timestamptz, has_result boolean,
    {", ".join(f"{name} {kind}" for name, kind in _RESULT_COLUMNS)})
), completed AS (
  UPDATE queue_items AS q SET status = '{ItemStatus.COMPLETED.value}', locked_by = NULL,
    lease_expires_at = NULL, last_error = NULL, finished_at = now()
  FROM outcome AS o
  WHERE q.id = o.id AND q.status = '{ItemStatus.IN_PROGRESS.value}'
    AND q.locked_by = o.worker AND q.attempts = o.attempt AND q.started_at = o.started_at
  RETURNING q.id, q.document_id, q.attempts
), closed AS (
  UPDATE queue_attempts AS a
  SET finished_at = now(), outcome = '{AttemptOutcome.COMPLETED.value}', error = NULL
  FROM completed AS c
  WHERE a.queue_item_id = c.id AND a.attempt = c.attempts AND a.finished_at IS NULL
), newest AS (
  SELECT max(c.id) AS id, c.document_id FROM completed AS c GROUP BY c.document_id
), followed AS (
  UPDATE documents AS d SET
    {
    ", ".join(
        f"{name} = CASE WHEN o.has_result THEN o.{name} ELSE d.{name} END"
        for name, _ in _RESULT_COLUMNS
    )
},
    processed_at = CASE WHEN o.has_result THEN now() ELSE d.processed_at END,
    status = CASE WHEN d.xmin <> seen.xmin THEN d.status
      WHEN latest.id = n.id THEN '{DocumentStatus.COMPLETED.value}'
      ELSE {_document_status_of("latest.status")} END,
    error = CASE WHEN d.xmin <> seen.xmin THEN d.error
      WHEN latest.id <> n.id AND latest.status = '{ItemStatus.FAILED.value}'
      THEN latest.last_error END,
    updated_at = now()
  FROM newest AS n
  JOIN outcome AS o ON o.id = n.id
  JOIN queue_items AS latest ON latest.id = {_latest_item_of("n.document_id")}
  JOIN documents AS seen ON seen.id = n.document_id
  WHERE d.id = n.document_id
)
SELECT c.id, c.document_id, d.callback_url
FROM completed AS c JOIN documents AS d ON d.id = c.document_id"""


def complete_batch_postgresql(
    outcomes: Sequence[tuple[tuple[int, str, int, datetime | None], dict[str, Any] | None]],
) -> tuple[str, dict[str, Any]]:
    """PostgreSQL: complete held items, close their attempts and write their documents'
    results and status, in one statement that returns (id, document_id, callback_url)
    of the items it completed.

    ``outcomes`` are (claim key, document column values or None) pairs; the
    statement, for the driver, and its parameters.
    """
    rows = [
        {
            "id": item_id,
            "worker": worker,
            "attempt": attempt,
            "started_at": None if started_at is None else started_at.isoformat(),
            "has_result": columns is not None,
        }
        | (columns or {})
        for (item_id, worker, attempt, started_at), columns in outcomes
    ]
    return _POSTGRESQL_COMPLETE_BATCH, {"outcomes": json.dumps(rows, ensure_ascii=False)}


# SQLite's record of many successes: three statements whose text never changes,
# run on the driver's connection: through SQLAlchemy's execution they cost a third
# of the record's CPU (cProfile, outcomes of 10).
# The batch travels as one JSON parameter read by json_each, where a list of
# bound values per row made SQLAlchemy render and process every value in Python
# (most of a pass's time). The statements run in order in one transaction, so
# the documents follow items already completed. (The unary + keeps SQLite from
# reading every in-progress item through the status index: the items are
# found by their ids.)
_SQLITE_COMPLETE = f"""
UPDATE queue_items SET status = '{ItemStatus.COMPLETED.value}', locked_by = NULL,
  lease_expires_at = NULL, last_error = NULL, finished_at = :now
FROM (SELECT value ->> 0 AS id, value ->> 1 AS worker, value ->> 2 AS attempt,
        value ->> 3 AS started_at
      FROM json_each(:claims)) AS claim
WHERE queue_items.id = claim.id AND +queue_items.status = '{ItemStatus.IN_PROGRESS.value}'
  AND queue_items.locked_by = claim.worker AND queue_items.attempts = claim.attempt
  AND queue_items.started_at = claim.started_at
RETURNING queue_items.id, queue_items.document_id,
  (SELECT callback_url FROM documents WHERE documents.id = queue_items.document_id)
  AS callback_url"""

_SQLITE_CLOSE_COMPLETED_ATTEMPTS = f"""
UPDATE queue_attempts SET finished_at = :now, outcome = '{AttemptOutcome.COMPLETED.value}',
  error = NULL
FROM (SELECT value ->> 0 AS item_id, value ->> 1 AS attempt FROM json_each(:attempts)) AS ended
WHERE queue_attempts.queue_item_id = ended.item_id AND queue_attempts.attempt = ended.attempt
  AND queue_attempts.finished_at IS NULL"""


def _sqlite_document_results() -> Update:
    """Results read from the JSON array :results (one object per document), each
    document then following its latest item as ``sync_documents`` makes it."""
    documents = Document.__table__
    result = func.json_each(bindparam("results")).table_valued("value").alias("result")

    def field(name: str, operator: str = "->>") -> ColumnElement[Any]:
        return result.c.value.op(operator)(literal_column(f"'$.{name}'"))

    now = bindparam("now", type_=UTCDateTime)
    values = {
        name: field(name, "->" if kind == "json" else "->>") for name, kind in _RESULT_COLUMNS
    }
    return (
        update(documents)
        .where(documents.c.id == field("document_id"))
        .values(**values, processed_at=now, **_following_latest_item(now))
    )


_SQLITE_INTEGERS = range(-(2**63), 2**63)


def _check_sqlite_integers(result: dict[str, Any]) -> None:
    """Refuse an integer no INTEGER column holds, as a bound value would be refused:
    SQLite would read it from JSON as a REAL and store that."""
    for name, kind in _RESULT_COLUMNS:
        value = result.get(name)
        if kind == "integer" and isinstance(value, int) and value not in _SQLITE_INTEGERS:
            raise OverflowError(f"{name} {value} is too large for an INTEGER column")


def complete_sqlite(
    claims: Sequence[tuple[int, str, int, str | None]], now: str
) -> tuple[str, dict]:
    """SQLite: the held items among (id, worker, attempt, started_at as stored) ``claims``
    become completed;
    returns (id, document_id, callback_url) of those. A statement for the driver and
    its parameters; ``now`` as the column stores it, as in each of these."""
    return _SQLITE_COMPLETE, {"claims": json.dumps(claims), "now": now}


def close_completed_attempts_sqlite(
    item_attempts: Sequence[tuple[int, int]], now: str
) -> tuple[str, dict]:
    """SQLite: end the open history rows of these (item id, attempt) pairs as completed."""
    return _SQLITE_CLOSE_COMPLETED_ATTEMPTS, {"attempts": json.dumps(item_attempts), "now": now}


def document_results_sqlite(results: Sequence[dict[str, Any]], now: str) -> tuple[str, dict]:
    """SQLite: extraction results written on their documents, which follow their latest
    items. Each result holds ``document_id`` and the values of the result columns."""
    for result in results:
        _check_sqlite_integers(result)
    # Not ASCII-escaped: text stays as it is, and JSON's escapes stay few.
    statement, literals = _sqlite_driver_text(_sqlite_document_results)
    return statement, {
        **literals,
        "results": json.dumps(results, ensure_ascii=False),
        "now": now,
    }


# A large text is written bound as it is, after the batch's statement: read out of
# the batch's JSON, SQLite's json_each and ->> made copies of it upon copies (the
# worker's memory rose by 235 MiB for a text of 20 million characters, 41 bound).
_SQLITE_DOCUMENT_TEXT = "UPDATE documents SET text = :text WHERE id = :document_id"


def document_text_sqlite(document_id: int, text: str) -> tuple[str, dict]:
    """SQLite: one document's extracted text, for the driver."""
    return _SQLITE_DOCUMENT_TEXT, {"document_id": document_id, "text": text}


def settle(item_id: int, decision: Decision, error: str | None, now: datetime) -> Update:
    """Write a retry decision on an item leaving in_progress (failed, or pending again)."""
    values: dict[str, Any] = {
        "status": decision.status,
        "locked_by": None,
        "lease_expires_at": None,
    }
    if not decision.retries:
        values["finished_at"] = now
    elif decision.run_at is not None:
        values["run_at"] = decision.run_at
    if not decision.counts_attempt:
        values.update(attempts=QueueItem.attempts - 1, started_at=None)
    if error is not None:
        values["last_error"] = error
    return _by_id(item_id, **values)


def supersede(item_id: int, newer_id: int, now: datetime, counts_attempt: bool) -> Update:
    """Fold an item into its document's newer item: it ends cancelled."""
    values: dict[str, Any] = {
        "status": ItemStatus.CANCELLED,
        "locked_by": None,
        "lease_expires_at": None,
        "finished_at": now,
        "last_error": f"superseded by queue item {newer_id}",
    }
    if not counts_attempt:
        values["attempts"] = QueueItem.attempts - 1
    return _by_id(item_id, **values)


def _cancelled(now: datetime) -> dict[str, Any]:
    return {
        "status": ItemStatus.CANCELLED,
        "locked_by": None,
        "lease_expires_at": None,
        "finished_at": now,
    }


def retry(item_id: int, now: datetime) -> Update:
    """A finished item pending again, due now, with all its attempts ahead of it."""
    return _by_id(item_id, **_retried(now))


def _retried(now: datetime) -> dict[str, Any]:
    return {
        "status": ItemStatus.PENDING,
        "attempts": 0,
        "run_at": now,
        "started_at": None,
        "finished_at": None,
    }


def failed_latest_ids() -> Select:
    """Ids of the failed items that are their document's latest: what "Retry all failed" retries."""
    return (
        select(QueueItem.id)
        .where(QueueItem.status == ItemStatus.FAILED, is_latest_of_its_document())
        .order_by(QueueItem.id)
    )


def items_in(item_ids: Sequence[int], statuses: Iterable[ItemStatus]) -> Select:
    """These items, those still in one of ``statuses``, in id order: their id, document,
    status and attempts."""
    return (
        select(QueueItem.id, QueueItem.document_id, QueueItem.status, QueueItem.attempts)
        .where(QueueItem.id.in_(item_ids), QueueItem.status.in_(list(statuses)))
        .order_by(QueueItem.id)
    )


def lock_items(
    item_ids: Sequence[int], statuses: Iterable[ItemStatus], skip_locked: bool = False
) -> Select:
    """``items_in``, locked in id order (as a purge takes them); with ``skip_locked``,
    without those another transaction holds."""
    return items_in(item_ids, statuses).with_for_update(skip_locked=skip_locked)


def retry_latest(item_ids: Sequence[int], statuses: Iterable[ItemStatus], now: datetime) -> Update:
    """``retry`` of these items, those still in ``statuses`` and their document's latest;
    returns the documents of those it made pending."""
    return (
        update(QueueItem)
        .where(
            QueueItem.id.in_(item_ids),
            QueueItem.status.in_(list(statuses)),
            is_latest_of_its_document(),
        )
        .values(_retried(now))
        .returning(QueueItem.document_id)
        .execution_options(synchronize_session=False)
    )


def cancel_all(item_ids: Sequence[int], now: datetime) -> Update:
    """``cancel`` of these items (locked and checked by the caller)."""
    return (
        update(QueueItem)
        .where(QueueItem.id.in_(item_ids))
        .values(_cancelled(now))
        .execution_options(synchronize_session=False)
    )


def raise_priority(item_id: int, priority: int) -> Update:
    """A pending item's priority raised to at least ``priority`` (others are left as they are)."""
    return (
        update(QueueItem)
        .where(
            QueueItem.id == item_id,
            QueueItem.status == ItemStatus.PENDING,
            QueueItem.priority < priority,
        )
        .values(priority=priority)
        .execution_options(synchronize_session=False)
    )


def _by_id(item_id: int, **values: Any) -> Update:
    return (
        update(QueueItem)
        .where(QueueItem.id == item_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


# -- attempt history ------------------------------------------------------------


def open_attempts(item_attempts: Iterable[tuple[int, int]], worker: str, now: datetime) -> tuple:
    """An insert and its rows: one history row per claimed (item id, attempt)."""
    rows = [
        {"queue_item_id": item_id, "attempt": attempt, "worker": worker, "started_at": now}
        for item_id, attempt in item_attempts
    ]
    return QueueAttempt.__table__.insert(), rows


def close_attempts(
    item_attempts: Iterable[tuple[int, int]], now: datetime, outcome: str, error: str | None
) -> Update:
    """End the open history rows of these (item id, attempt number) pairs."""
    return (
        update(QueueAttempt)
        .where(
            tuple_(QueueAttempt.queue_item_id, QueueAttempt.attempt).in_(list(item_attempts)),
            QueueAttempt.finished_at.is_(None),
        )
        .values(finished_at=now, outcome=outcome, error=error)
        .execution_options(synchronize_session=False)
    )


def forget_attempt(item_id: int, attempt: int) -> Delete:
    """Remove the open history row of an attempt that never started (a release)."""
    return delete(QueueAttempt).where(
        QueueAttempt.queue_item_id == item_id,
        QueueAttempt.attempt == attempt,
        QueueAttempt.finished_at.is_(None),
    )


def delete_items(ids: Any) -> tuple[Delete, Delete]:
    """The history of these items, then the items."""
    return (
        delete(QueueAttempt).where(QueueAttempt.queue_item_id.in_(ids)),
        delete(QueueItem).where(QueueItem.id.in_(ids)).execution_options(synchronize_session=False),
    )


# -- documents follow their latest item -----------------------------------------


def sync_documents(document_ids: list[int], now: Any) -> tuple[Update, dict[str, Any]]:
    """Set each document's status and error from its latest queue item: a statement and
    its parameters."""
    if isinstance(now, datetime):
        # Built once: building this statement costs more Python than running it.
        return _SYNC_DOCUMENTS, {"document_ids": document_ids, "now": now}
    return _sync_documents(bindparam("document_ids", document_ids, expanding=True), now), {}


def _sync_documents(document_ids: Any, now: Any) -> Update:
    return (
        update(Document)
        .where(Document.id.in_(document_ids))
        .values(**_following_latest_item(now))
        .execution_options(synchronize_session=False)
    )


def _following_latest_item(now: Any) -> dict[str, Any]:
    """A document's status and error as its latest queue item says (values of an UPDATE).

    Each value looks the latest item up once: a searched CASE (WHEN status = ...)
    ran the lookup again for every WHEN, as SQLite evaluates every subquery where
    it stands, which made the update of a group of results cost fourteen index
    lookups a document where two do.
    """
    # max(), not ORDER BY id DESC LIMIT 1: read from the document's index entries, no sort.
    latest = latest_item_id(Document.id).correlate(Document).scalar_subquery()

    def of_latest(value: ColumnElement[Any]) -> ColumnElement[Any]:
        return select(value).where(QueueItem.id == latest).scalar_subquery()

    document_status = case(DOCUMENT_STATUS_OF_ITEM, value=QueueItem.status)
    failure = case({ItemStatus.FAILED: QueueItem.last_error}, value=QueueItem.status)
    return {
        "status": func.coalesce(of_latest(document_status), Document.status),
        "error": of_latest(failure),
        "updated_at": now,
    }


def sync_documents_sqlite(document_ids: Sequence[int], now: str) -> tuple[str, dict]:
    """SQLite: ``sync_documents`` for the driver, the ids read from a JSON array and
    ``now`` as the column stores it: its statement and parameters."""
    statement, literals = _sqlite_driver_text(_sqlite_sync_documents)
    ids = json.dumps(sorted(set(document_ids)))
    return statement, {**literals, "document_ids": ids, "now": now}


def _sqlite_sync_documents() -> Update:
    ids = func.json_each(bindparam("document_ids")).table_valued("value")
    return _sync_documents(select(ids.c.value), bindparam("now", type_=UTCDateTime))


# Built on first use: compiling the results' statement took a worker's import 8 ms
# longer, PostgreSQL's too.
@functools.cache
def _sqlite_driver_text(build: Callable[[], Update]) -> tuple[str, dict[str, Any]]:
    """The statement ``build`` makes as SQLite text in sqlite3's named parameters, and
    the values of the literals SQLAlchemy bound in it."""
    compiled = build().compile(dialect=sqlite.dialect(paramstyle="named"))
    literals = {
        name: getattr(value, "value", value)  # enums as the text they stand for
        for name, value in compiled.params.items()
        if value is not None
    }
    return str(compiled), literals


_SYNC_DOCUMENTS = _sync_documents(
    bindparam("document_ids", expanding=True), bindparam("now", type_=UTCDateTime)
)


# -- the queue's switches -------------------------------------------------------


def paused() -> Select:
    return select(QueueState.paused).where(QueueState.id == QUEUE_STATE_ID)


def take_pruner_turn(now: datetime, every: timedelta) -> Update:
    """Stamp the pruner's run unless another process ran it within ``every``."""
    return (
        update(QueueState)
        .where(
            QueueState.id == QUEUE_STATE_ID,
            or_(QueueState.pruned_at.is_(None), QueueState.pruned_at <= now - every),
        )
        .values(pruned_at=now)
        .execution_options(synchronize_session=False)
    )
