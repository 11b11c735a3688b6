"""a quarantine for messages that cannot be a valid task

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sagaflow_quarantine",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("queue", sa.String(1000), nullable=True),
        sa.Column("task", sa.String(1000), nullable=True),
        sa.Column("task_id", sa.String(1000), nullable=True),
        sa.Column("saga_id", sa.String(64), nullable=True),
        sa.Column("hostname", sa.String(1000), nullable=True),
        sa.Column("received_at", Timestamp, nullable=False),
        sa.Column("recorded_at", Timestamp, nullable=False),
        sa.Column("content_type", sa.String(1000), nullable=True),
        sa.Column("content_encoding", sa.String(1000), nullable=True),
        sa.Column("headers", JSONType, nullable=False),
        sa.Column("properties", JSONType, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("body_size", sa.BigInteger, nullable=False),
        sa.Column("truncated", sa.Boolean, nullable=False),
        sa.Column("note", sa.Text, nullable=True),
    )
    op.create_index("ix_sagaflow_quarantine_received", "sagaflow_quarantine", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_sagaflow_quarantine_received", "sagaflow_quarantine")
    op.drop_table("sagaflow_quarantine")
