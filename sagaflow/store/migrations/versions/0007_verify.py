"""steps keep their verify task and its attempts

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sagaflow_steps") as batch:
        batch.add_column(sa.Column("verify", sa.String(255), nullable=True))
        batch.add_column(
            sa.Column("verify_attempts", sa.Integer, nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("verify_task_id", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sagaflow_steps") as batch:
        batch.drop_column("verify_task_id")
        batch.drop_column("verify_attempts")
        batch.drop_column("verify")
