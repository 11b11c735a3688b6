"""sagas are found by their input on PostgreSQL: a GIN index (jsonb_path_ops) on sagas.data

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

Building it takes a lock that holds writes to sagaflow_sagas back while it runs (README,
"Upgrading"). On a large table, build it beforehand without that lock and this revision keeps
it:
    CREATE INDEX CONCURRENTLY ix_sagaflow_sagas_data
        ON sagaflow_sagas USING gin (data jsonb_path_ops);
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def _index() -> sa.Index:
    sagas = sa.Table("sagaflow_sagas", sa.MetaData(), sa.Column("data", JSONB))
    index = sa.Index(
        "ix_sagaflow_sagas_data",
        sagas.c.data,
        postgresql_using="gin",
        postgresql_ops={"data": "jsonb_path_ops"},
    )
    return index.ddl_if(dialect="postgresql")  # SQLite searches without an index


def upgrade() -> None:
    _index().create(op.get_bind(), checkfirst=True)  # checkfirst: keep one built by hand


def downgrade() -> None:
    _index().drop(op.get_bind(), checkfirst=True)
