"""Queue notifications: PostgreSQL says when an item becomes due (pickup in milliseconds).

A trigger on ``queue_items`` calls ``pg_notify('docqueue_queue', '')`` whenever
a row is written pending and due (an upload, a reprocess, a retry, a release),
inside that transaction: listeners hear it at commit, and PostgreSQL folds a
transaction's identical notifications into one. Uploads pay no extra round
trip. SQLite has no NOTIFY: there the committing process wakes the others
(``docqueue_app.queue.notify``), and this migration does nothing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

CREATE_FUNCTION = """
CREATE OR REPLACE FUNCTION docqueue_notify_due() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('docqueue_queue', '');
    RETURN NULL;
END
$$
"""

CREATE_TRIGGER = """
CREATE TRIGGER queue_items_notify_due
AFTER INSERT OR UPDATE ON queue_items
FOR EACH ROW
WHEN (NEW.status = 'pending' AND NEW.run_at <= now())
EXECUTE FUNCTION docqueue_notify_due()
"""


def _on_postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade():
    if _on_postgresql():
        op.execute(CREATE_FUNCTION)
        op.execute(CREATE_TRIGGER)


def downgrade():
    if _on_postgresql():
        op.execute("DROP TRIGGER IF EXISTS queue_items_notify_due ON queue_items")
        op.execute("DROP FUNCTION IF EXISTS docqueue_notify_due()")
