"""sagas, steps, history and events

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "sagaflow_sagas",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("saga_type", sa.String(200), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("data", JSONType, nullable=True),
        sa.Column("current_step", sa.Integer, nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("error", JSONType, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("finished_at", Timestamp, nullable=True),
    )
    op.create_index("ix_sagaflow_sagas_state_created", "sagaflow_sagas", ["state", "created_at"])
    op.create_index("ix_sagaflow_sagas_type_created", "sagaflow_sagas", ["saga_type", "created_at"])
    op.create_index("ix_sagaflow_sagas_created", "sagaflow_sagas", ["created_at"])

    op.create_table(
        "sagaflow_steps",
        sa.Column(
            "saga_id",
            sa.String(64),
            sa.ForeignKey("sagaflow_sagas.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("action", sa.String(255), nullable=False),
        sa.Column("compensation", sa.String(255), nullable=True),
        sa.Column("queue", sa.String(200), nullable=True),
        sa.Column("compensation_queue", sa.String(200), nullable=True),
        sa.Column("compensate_on_failure", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("result", JSONType, nullable=True),
        sa.Column("error", JSONType, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("compensation_attempts", sa.Integer, nullable=False),
        sa.Column("task_id", sa.String(255), nullable=True),
        sa.Column("compensation_task_id", sa.String(255), nullable=True),
        sa.Column("started_at", Timestamp, nullable=True),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.Column("compensation_started_at", Timestamp, nullable=True),
        sa.Column("compensated_at", Timestamp, nullable=True),
    )

    op.create_table(
        "sagaflow_history",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("saga_id", sa.String(64), nullable=False),
        sa.Column("at", Timestamp, nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("from_state", sa.String(32), nullable=True),
        sa.Column("to_state", sa.String(32), nullable=False),
        sa.Column("step", sa.String(200), nullable=True),
        sa.Column("detail", JSONType, nullable=True),
    )
    op.create_index("ix_sagaflow_history_saga", "sagaflow_history", ["saga_id", "id"])

    op.create_table(
        "sagaflow_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("saga_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("payload", JSONType, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("published_at", Timestamp, nullable=True),
    )
    op.create_index("ix_sagaflow_events_saga", "sagaflow_events", ["saga_id"])


def downgrade() -> None:
    op.drop_table("sagaflow_events")
    op.drop_table("sagaflow_history")
    op.drop_table("sagaflow_steps")
    op.drop_table("sagaflow_sagas")
