"""sagas may have a deadline, found by the recovery sweep through an index

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sagaflow_sagas") as batch:
        batch.add_column(sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_sagaflow_sagas_deadline", "sagaflow_sagas", ["state", "deadline_at"])


def downgrade() -> None:
    op.drop_index("ix_sagaflow_sagas_deadline", "sagaflow_sagas")
    with op.batch_alter_table("sagaflow_sagas") as batch:
        batch.drop_column("deadline_at")
