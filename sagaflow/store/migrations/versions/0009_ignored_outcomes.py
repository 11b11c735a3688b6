"""ignored outcomes are counted per saga and per step and kind; the history keeps the first few

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from sagaflow.core.vocabulary import HistoryEvent

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    ignored = op.create_table(
        "sagaflow_ignored",
        sa.Column("saga_id", sa.String(64), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("first_at", Timestamp, nullable=False),
        sa.Column("last_at", Timestamp, nullable=False),
    )
    by_step = op.create_table(
        "sagaflow_ignored_by_step",
        sa.Column("saga_id", sa.String(64), primary_key=True),
        sa.Column("step", sa.String(200), primary_key=True),
        sa.Column("outcome", sa.String(16), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("last_at", Timestamp, nullable=False),
    )
    # The outcomes already noted in the history count too: the bound then holds for them.
    history = sa.table(
        "sagaflow_history",
        sa.column("saga_id", sa.String),
        sa.column("at", Timestamp),
        sa.column("event", sa.String),
        sa.column("step", sa.String),
        sa.column("detail", JSONType),
    )
    noted = history.c.event == HistoryEvent.OUTCOME_IGNORED.value
    op.execute(
        ignored.insert().from_select(
            ["saga_id", "count", "first_at", "last_at"],
            sa.select(
                history.c.saga_id,
                sa.func.count(),
                sa.func.min(history.c.at),
                sa.func.max(history.c.at),
            )
            .where(noted)
            .group_by(history.c.saga_id),
        )
    )
    step = sa.func.coalesce(history.c.step, "")
    outcome = sa.func.substr(sa.func.coalesce(history.c.detail["outcome"].as_string(), ""), 1, 16)
    op.execute(
        by_step.insert().from_select(
            ["saga_id", "step", "outcome", "count", "last_at"],
            sa.select(history.c.saga_id, step, outcome, sa.func.count(), sa.func.max(history.c.at))
            .where(noted)
            .group_by(history.c.saga_id, step, outcome),
        )
    )


def downgrade() -> None:
    op.drop_table("sagaflow_ignored_by_step")
    op.drop_table("sagaflow_ignored")
