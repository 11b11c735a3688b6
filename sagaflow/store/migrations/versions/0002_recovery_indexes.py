"""indexes for the recovery sweep: stalled sagas, unpublished events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_sagaflow_sagas_state_updated", "sagaflow_sagas", ["state", "updated_at"])
    op.create_index(
        "ix_sagaflow_events_unpublished", "sagaflow_events", ["published_at", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_sagaflow_events_unpublished", "sagaflow_events")
    op.drop_index("ix_sagaflow_sagas_state_updated", "sagaflow_sagas")
