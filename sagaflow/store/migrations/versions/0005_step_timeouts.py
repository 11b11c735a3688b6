"""step timeouts: the policy and the executing action's deadline

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sagaflow_steps") as batch:
        batch.add_column(sa.Column("timeout", sa.Float, nullable=True))
        batch.add_column(sa.Column("on_timeout", sa.String(16), nullable=True))
        batch.add_column(sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_sagaflow_steps_deadline", "sagaflow_steps", ["status", "deadline_at"])


def downgrade() -> None:
    op.drop_index("ix_sagaflow_steps_deadline", "sagaflow_steps")
    with op.batch_alter_table("sagaflow_steps") as batch:
        batch.drop_column("deadline_at")
        batch.drop_column("on_timeout")
        batch.drop_column("timeout")
