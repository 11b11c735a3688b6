"""The tables sagaflow owns. Alembic migrations (sagaflow/store/migrations) build exactly this."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData()

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)

sagas = sa.Table(
    "sagaflow_sagas",
    metadata,
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
    sa.Column("cancel_requested_at", Timestamp, nullable=True),
    sa.Column("deadline_at", Timestamp, nullable=True),
    # `sagaflow list` filters by state and/or type, newest first.
    sa.Index("ix_sagaflow_sagas_state_created", "state", "created_at"),
    sa.Index("ix_sagaflow_sagas_type_created", "saga_type", "created_at"),
    sa.Index("ix_sagaflow_sagas_created", "created_at"),
    # The recovery sweep looks for running sagas that have not moved for a while.
    sa.Index("ix_sagaflow_sagas_state_updated", "state", "updated_at"),
    # ... and for running sagas past their deadline.
    sa.Index("ix_sagaflow_sagas_deadline", "state", "deadline_at"),
)
# `sagaflow list --where key=value` on PostgreSQL: JSONB containment (data @> ...) on the input.
sa.Index(
    "ix_sagaflow_sagas_data",
    sagas.c.data,
    postgresql_using="gin",
    postgresql_ops={"data": "jsonb_path_ops"},
).ddl_if(dialect="postgresql")

steps = sa.Table(
    "sagaflow_steps",
    metadata,
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
    sa.Column("retry", JSONType, nullable=True),
    sa.Column("compensation_retry", JSONType, nullable=True),
    sa.Column("timeout", sa.Float, nullable=True),
    sa.Column("on_timeout", sa.String(16), nullable=True),
    sa.Column("pivot", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("retriable", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("verify", sa.String(255), nullable=True),
    sa.Column("verify_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("verify_task_id", sa.String(255), nullable=True),
    sa.Column("deadline_at", Timestamp, nullable=True),
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
    # The recovery sweep looks for step timers that are due (timeouts, retries).
    sa.Index("ix_sagaflow_steps_deadline", "status", "deadline_at"),
)

history = sa.Table(
    "sagaflow_history",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("saga_id", sa.String(64), nullable=False),
    sa.Column("at", Timestamp, nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("from_state", sa.String(32), nullable=True),
    sa.Column("to_state", sa.String(32), nullable=False),
    sa.Column("step", sa.String(200), nullable=True),
    sa.Column("detail", JSONType, nullable=True),
    sa.Index("ix_sagaflow_history_saga", "saga_id", "id"),
)

events = sa.Table(
    "sagaflow_events",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("saga_id", sa.String(64), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("payload", JSONType, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("published_at", Timestamp, nullable=True),
    sa.Index("ix_sagaflow_events_saga", "saga_id"),
    sa.Index("ix_sagaflow_events_unpublished", "published_at", "created_at"),
)

# Messages a worker took off a queue because they could not be a valid task.
quarantine = sa.Table(
    "sagaflow_quarantine",
    metadata,
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
    sa.Index("ix_sagaflow_quarantine_received", "received_at"),
)

# Outcomes the orchestrator ignored (duplicate, late or forged), counted per saga: the history
# keeps only the first few of them in full (IGNORED_IN_HISTORY, sagaflow.store.protocol), these
# rows the count.
# No foreign key to the saga: checking one would lock the saga row for share, and wait for a
# transition of the saga in flight.
ignored = sa.Table(
    "sagaflow_ignored",
    metadata,
    sa.Column("saga_id", sa.String(64), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("first_at", Timestamp, nullable=False),
    sa.Column("last_at", Timestamp, nullable=False),
)

ignored_by_step = sa.Table(
    "sagaflow_ignored_by_step",
    metadata,
    sa.Column("saga_id", sa.String(64), primary_key=True),
    sa.Column("step", sa.String(200), primary_key=True),  # "" for a position with no step
    sa.Column("outcome", sa.String(16), primary_key=True),  # succeeded or failed
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("last_at", Timestamp, nullable=False),
)
