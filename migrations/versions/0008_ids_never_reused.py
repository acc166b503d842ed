"""SQLite never gives a deleted document's or queue item's id to a new row.

Without AUTOINCREMENT, SQLite numbers a new row max(id) + 1, so deleting the
newest document gave its id, and its queue item's, to the next upload. A client
holding the old id then read a stranger's document, and a worker still
processing the deleted document, once the same process had claimed the new
item (attempt 1 under the same worker id), passed the completion's fencing
check and wrote the deleted document's text onto the new one. PostgreSQL's
sequences never go back; this migration does nothing there.

SQLite cannot add AUTOINCREMENT to a table, so both tables are rebuilt (batch
mode copies the rows); the new tables' counters start at the largest id they
hold. Batch mode rebuilds the indexes from reflection, which loses the claim
index's DESC, so each index is made again from the SQL it had. migrations/env.py turns SQLite's foreign keys off for
migrations, as SQLite's procedure for rebuilding a table requires: dropping the
old ``documents`` would otherwise cascade to every row that refers to it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLES = ("documents", "queue_items")


def upgrade():
    _rebuild_on_sqlite(autoincrement=True)


def downgrade():
    _rebuild_on_sqlite(autoincrement=False)


def _rebuild_on_sqlite(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    connection = op.get_bind()
    for table in TABLES:
        indexes = connection.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master"
            " WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
            (table,),
        ).fetchall()
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
        ):
            pass
        for name, sql in indexes:
            connection.exec_driver_sql(f'DROP INDEX IF EXISTS "{name}"')
            connection.exec_driver_sql(sql)
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"rows refer to missing rows after the rebuild: {broken[:5]}")
