"""steps keep their retry policies

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("sagaflow_steps") as batch:
        batch.add_column(sa.Column("retry", JSONType, nullable=True))
        batch.add_column(sa.Column("compensation_retry", JSONType, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sagaflow_steps") as batch:
        batch.drop_column("compensation_retry")
        batch.drop_column("retry")
