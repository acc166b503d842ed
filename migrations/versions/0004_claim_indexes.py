"""Claim indexes: "is anything due?" answered from an index, whatever the backlog.

The claim walks ``ix_queue_items_claim`` one priority at a time (an equality on
priority, a range on run_at); the idle poll's "is anything due?" needs the
earliest run_at of all pending items, which this index gives in O(log n).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

PENDING = sa.text("status = 'pending'")


def upgrade():
    op.create_index(
        "ix_queue_items_due",
        "queue_items",
        ["run_at"],
        sqlite_where=PENDING,
        postgresql_where=PENDING,
    )


def downgrade():
    op.drop_index("ix_queue_items_due", table_name="queue_items")
