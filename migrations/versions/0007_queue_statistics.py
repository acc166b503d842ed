"""Queue statistics: PostgreSQL analyzes the queue's tables after every thousand changed rows.

A queue's tables change shape by the minute: a burst of uploads onto a long
finished history, thousands in progress at once, then all finished again.
Autovacuum's default analyzes a table once a tenth of it has changed, so
statistics taken while the queue was idle lasted through bursts of tens of
thousands of uploads, and the planner, told that nothing was in progress,
checked each claim candidate against every item in progress (14-17 ms a claim
of 10 with 16,000 in progress, 1.4 ms once analyzed). With a fixed threshold
they are at most one autovacuum round (a minute by default) behind; an ANALYZE
reads a sample of 30,000 rows whatever the table's size. SQLite plans from the
indexes the statements name, and this migration does nothing there.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

QUEUE_TABLES = ("queue_items", "queue_attempts", "documents", "webhook_deliveries")
ANALYZE_AFTER_CHANGED_ROWS = 1000


def upgrade():
    _alter_queue_tables(
        "SET (autovacuum_analyze_scale_factor = 0,"
        f" autovacuum_analyze_threshold = {ANALYZE_AFTER_CHANGED_ROWS})"
    )


def downgrade():
    _alter_queue_tables("RESET (autovacuum_analyze_scale_factor, autovacuum_analyze_threshold)")


def _alter_queue_tables(change: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in QUEUE_TABLES:
            op.execute(f"ALTER TABLE {table} {change}")
