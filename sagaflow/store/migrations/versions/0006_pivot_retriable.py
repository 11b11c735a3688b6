"""steps know whether they are the pivot or retriable

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sagaflow_steps") as batch:
        batch.add_column(sa.Column("pivot", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(
            sa.Column("retriable", sa.Boolean, nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("sagaflow_steps") as batch:
        batch.drop_column("retriable")
        batch.drop_column("pivot")
