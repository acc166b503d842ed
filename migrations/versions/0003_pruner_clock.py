"""The pruner's clock: when it last ran, so it runs once per cluster per interval.

Also makes sure the one queue_state row exists, so every process can stamp it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from docqueue_app.models import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("queue_state") as batch:
        batch.add_column(sa.Column("pruned_at", UTCDateTime(), nullable=True))
    op.execute(
        "INSERT INTO queue_state (id, paused, updated_at) "
        "SELECT 1, false, CURRENT_TIMESTAMP "
        "WHERE NOT EXISTS (SELECT 1 FROM queue_state WHERE id = 1)"
    )


def downgrade():
    with op.batch_alter_table("queue_state") as batch:
        batch.drop_column("pruned_at")
