"""The store's SQL rows: statements built once, row <-> record conversion, the transition write.

Used by sagaflow.store.sql only (and read-only queries in sagaflow.store.stats).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sagaflow.core.definitions import SagaState, StepStatus
from sagaflow.core.machine import (
    ErrorInfo,
    HistoryEntry,
    PublishEvent,
    SagaRecord,
    StepRecord,
)
from sagaflow.core.vocabulary import HistoryEvent, OnTimeout
from sagaflow.errors import ConcurrencyConflict
from sagaflow.store import postgres as store_pg
from sagaflow.store.schema import (
    JSONType,
    Timestamp,
    events,
    history,
    ignored,
    ignored_by_step,
    sagas,
    steps,
)

# Ignored outcomes (duplicate, late or forged) a saga's history keeps in full; past them, each
# one only adds to the saga's counters, so a flood of them costs an upsert each and no row.
IGNORED_IN_HISTORY = 20


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def to_utc(value: datetime | None) -> datetime | None:
    # SQLite keeps the wall-clock digits and drops the offset: store every instant as UTC.
    if value is not None and value.tzinfo is not None:
        return value.astimezone(timezone.utc)
    return value


def aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything sagaflow stores is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


@dataclass(frozen=True)
class HistoryRow:
    id: int
    saga_id: str
    at: datetime
    event: str
    from_state: str | None
    to_state: str
    step: str | None
    detail: dict[str, Any] | None


@dataclass(frozen=True)
class EventRow:
    id: int
    saga_id: str
    name: str
    payload: dict[str, Any]
    created_at: datetime
    published_at: datetime | None


@dataclass(frozen=True)
class IgnoredCount:
    """Outcomes of one kind (succeeded or failed) ignored for one step (None: no such step)."""

    step: str | None
    outcome: str
    count: int
    last_at: datetime


@dataclass(frozen=True)
class IgnoredOutcomes:
    """How many outcomes the orchestrator ignored for a saga, in all and by step and kind."""

    count: int
    first_at: datetime | None = None
    last_at: datetime | None = None
    by_step: tuple[IgnoredCount, ...] = ()

    @property
    def in_history(self) -> int:
        """How many of them the history holds in full (the first ones)."""
        return min(self.count, IGNORED_IN_HISTORY)

    def summary(self) -> str:
        noun = "outcome" if self.count == 1 else "outcomes"
        where = (
            f"first {IGNORED_IN_HISTORY} in the history"
            if self.count > IGNORED_IN_HISTORY
            else "all in the history"
        )
        return f"{self.count} {noun} ignored ({where})"

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "in_history": self.in_history,
            "first_at": self.first_at.isoformat() if self.first_at else None,
            "last_at": self.last_at.isoformat() if self.last_at else None,
            "by_step": [
                {
                    "step": c.step,
                    "outcome": c.outcome,
                    "count": c.count,
                    "last_at": c.last_at.isoformat(),
                }
                for c in self.by_step
            ],
        }


SAGA_COLUMNS = [c.label(f"saga_{c.name}") for c in sagas.c]
STEP_COLUMNS = [c.label(f"step_{c.name}") for c in steps.c]


def load_saga(conn: Connection, saga_id: str, *, lock: bool) -> SagaRecord | None:
    """The saga and its steps in one query; with `lock`, after taking the saga's row lock.

    The lock is a statement of its own: under READ COMMITTED, a statement that waited for a
    row lock re-reads only the locked row, so a join locking the saga would return the steps
    as they were before the lock holder committed.
    """
    rows: Sequence[Any]
    if lock and store_pg.uses_pipeline(conn):
        rows = store_pg.load_locked(conn, saga_id) or []
    else:
        # SQLite needs no lock statement: BEGIN IMMEDIATE already serialises writers.
        locking = lock and conn.dialect.name != "sqlite"
        if locking and conn.execute(LOCK_SAGA, {"saga_id": saga_id}).first() is None:
            return None
        rows = conn.execute(LOAD_SAGA, {"saga_id": saga_id}).mappings().all()
    if not rows:
        return None
    saga_row = {c.name: rows[0][f"saga_{c.name}"] for c in sagas.c}
    step_records = [
        step_from_row({c.name: row[f"step_{c.name}"] for c in steps.c})
        for row in rows
        if row["step_position"] is not None
    ]
    return saga_from_row(saga_row, step_records)


# Hot-path statements are built once: building a statement costs more Python time than
# running it (SQLAlchemy caches the compiled form by the statement's structure).
LOCK_SAGA = sa.select(sagas.c.id).where(sagas.c.id == sa.bindparam("saga_id")).with_for_update()
LOAD_SAGA = (
    sa.select(*SAGA_COLUMNS, *STEP_COLUMNS)
    .select_from(sagas.outerjoin(steps, steps.c.saga_id == sagas.c.id))
    .where(sagas.c.id == sa.bindparam("saga_id"))
    .order_by(steps.c.position)
)
UPDATE_SAGA = sagas.update().where(
    sagas.c.id == sa.bindparam("key_id"), sagas.c.version == sa.bindparam("key_version")
)
# Never change after the saga is recorded: left out of every update (the input can be large).
FIXED_SAGA_COLUMNS = ("id", "saga_type", "data", "created_at")
UPDATE_STEP = steps.update().where(
    steps.c.saga_id == sa.bindparam("key_saga_id"),
    steps.c.position == sa.bindparam("key_position"),
)


@cache
def ignored_statements(dialect: str) -> tuple[Any, Any, Any]:
    """Count an ignored outcome for its saga, then for its step and kind, then note it in the
    history if the saga's count is still within IGNORED_IN_HISTORY (parameters: saga_id, at,
    step, step_key, outcome, detail). The saga's counter goes first: its row lock queues up
    concurrent notes on one saga, so the bound is exact. (No RETURNING: SQLite has it only
    since 3.35; PostgreSQL's pipelined path adds it.)
    """
    from sqlalchemy.dialects import postgresql, sqlite

    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    saga_id, at = sa.bindparam("saga_id", type_=sa.String), sa.bindparam("at", type_=Timestamp)
    # Constants as SQL text: the pipelined path sends only the parameters named above.
    one: sa.ColumnClause[Any] = sa.literal_column("1")
    bound: sa.ColumnClause[Any] = sa.literal_column(str(IGNORED_IN_HISTORY))
    new_count = insert(ignored).values(saga_id=saga_id, count=one, first_at=at, last_at=at)
    per_saga = new_count.on_conflict_do_update(
        index_elements=[ignored.c.saga_id],
        set_={"count": ignored.c.count + one, "last_at": new_count.excluded.last_at},
    )
    per_step = insert(ignored_by_step).values(
        saga_id=saga_id,
        step=sa.bindparam("step_key", type_=sa.String),
        outcome=sa.bindparam("outcome", type_=sa.String),
        count=one,
        last_at=at,
    )
    per_step = per_step.on_conflict_do_update(
        index_elements=list(ignored_by_step.primary_key),
        set_={"count": ignored_by_step.c.count + one, "last_at": per_step.excluded.last_at},
    )
    count_now = sa.select(ignored.c.count).where(ignored.c.saga_id == saga_id).scalar_subquery()
    noted = history.insert().from_select(
        ["saga_id", "at", "event", "from_state", "to_state", "step", "detail"],
        sa.select(
            saga_id,
            at,
            sa.literal_column(f"'{HistoryEvent.OUTCOME_IGNORED.value}'"),
            sa.null(),
            sagas.c.state,
            sa.bindparam("step", type_=sa.String),
            sa.bindparam("detail", type_=JSONType),
        ).where(count_now <= bound, sagas.c.id == saga_id),
    )
    return per_saga, per_step, noted


def ignored_params(
    saga_id: str, step: str | None, detail: dict[str, Any], at: datetime
) -> dict[str, Any]:
    return {
        "saga_id": saga_id,
        "at": to_utc(at),
        "step": step,
        "step_key": step or "",
        "outcome": str(detail.get("outcome", ""))[:16],
        "detail": detail,
    }


def note_ignored(conn: Connection, params: dict[str, Any]) -> int:
    """Count an ignored outcome, noted in the history within the bound (ignored_statements);
    the saga's count, this one included."""
    if store_pg.uses_pipeline(conn):
        return store_pg.note_ignored(conn, params)
    per_saga, per_step, noted = ignored_statements(conn.dialect.name)
    conn.execute(per_saga, params)
    counted = sa.select(ignored.c.count).where(ignored.c.saga_id == params["saga_id"])
    count = int(conn.execute(counted).scalar_one())
    conn.execute(per_step, params)
    if count <= IGNORED_IN_HISTORY:
        conn.execute(noted, params)
    return count


def load_ignored(conn: Connection, saga_id: str) -> IgnoredOutcomes:
    total = conn.execute(
        sa.select(ignored.c.count, ignored.c.first_at, ignored.c.last_at).where(
            ignored.c.saga_id == saga_id
        )
    ).first()
    if total is None:
        return IgnoredOutcomes(0)
    by_step = ignored_by_step.c
    rows = conn.execute(
        sa.select(by_step.step, by_step.outcome, by_step.count, by_step.last_at)
        .where(by_step.saga_id == saga_id)
        .order_by(by_step.step, by_step.outcome)
    ).all()
    return IgnoredOutcomes(
        count=int(total[0]),
        first_at=aware(total[1]),
        last_at=aware(total[2]),
        by_step=tuple(
            IgnoredCount(step or None, outcome, int(count), aware(at) or utcnow())
            for step, outcome, count, at in rows
        ),
    )


def write_transition(
    conn: Connection,
    before: SagaRecord,
    after: SagaRecord,
    changed_steps: Sequence[int] | frozenset[int],
    history_entries: Sequence[HistoryEntry],
    published: Sequence[PublishEvent],
    new_steps: Sequence[dict[str, Any]] = (),
) -> list[int]:
    """Store a transition (and, for a saga being started, its new step rows); the ids of the
    event rows recorded. ConcurrencyConflict if the saga's version moved."""
    now = after.updated_at or utcnow()
    row = saga_row(after)
    for column in FIXED_SAGA_COLUMNS:
        del row[column]
    row.update(version=before.version + 1, key_id=before.saga_id, key_version=before.version)
    step_updates = []
    for position in sorted(changed_steps):
        step = step_row(after.saga_id, after.steps[position])
        del step["saga_id"], step["position"]
        step_updates.append({**step, "key_saga_id": after.saga_id, "key_position": position})
    history_rows = [history_row(after.saga_id, now, e) for e in history_entries]
    event_rows = [event_row(after.saga_id, now, e) for e in published]
    if store_pg.uses_pipeline(conn):
        return store_pg.write(conn, row, step_updates, history_rows, event_rows, new_steps)
    updated = conn.execute(UPDATE_SAGA, row)
    if updated.rowcount != 1:
        raise ConcurrencyConflict(f"saga {before.saga_id} changed since version {before.version}")
    if new_steps:
        conn.execute(steps.insert(), list(new_steps))
    if step_updates:
        conn.execute(UPDATE_STEP, step_updates)
    if history_rows:
        conn.execute(history.insert(), history_rows)
    event_ids: list[int] = []
    for event in event_rows:
        result = conn.execute(events.insert().values(**event))
        pk = result.inserted_primary_key
        if pk is not None:
            event_ids.append(int(pk[0]))
    return event_ids


def saga_row(saga: SagaRecord) -> dict[str, Any]:
    return {
        "id": saga.saga_id,
        "saga_type": saga.saga_type,
        "state": saga.state.value,
        "data": saga.data,
        "current_step": saga.current_step,
        "version": saga.version,
        "error": saga.error.to_json() if saga.error else None,
        "created_at": to_utc(saga.created_at) or utcnow(),
        "updated_at": to_utc(saga.updated_at) or utcnow(),
        "finished_at": to_utc(saga.finished_at),
        "cancel_requested_at": to_utc(saga.cancel_requested_at),
        "deadline_at": to_utc(saga.deadline_at),
    }


def step_row(saga_id: str, step: StepRecord) -> dict[str, Any]:
    return {
        "saga_id": saga_id,
        "position": step.position,
        "name": step.name,
        "action": step.action,
        "compensation": step.compensation,
        "queue": step.queue,
        "compensation_queue": step.compensation_queue,
        "compensate_on_failure": step.compensate_on_failure,
        "retry": step.retry,
        "compensation_retry": step.compensation_retry,
        "timeout": step.timeout,
        "on_timeout": step.on_timeout.value if step.on_timeout else None,
        "pivot": step.pivot,
        "retriable": step.retriable,
        "verify": step.verify,
        "verify_attempts": step.verify_attempts,
        "verify_task_id": step.verify_task_id,
        "deadline_at": to_utc(step.deadline_at),
        "status": step.status.value,
        "result": step.result,
        "error": step.error.to_json() if step.error else None,
        "attempts": step.attempts,
        "compensation_attempts": step.compensation_attempts,
        "task_id": step.task_id,
        "compensation_task_id": step.compensation_task_id,
        "started_at": to_utc(step.started_at),
        "finished_at": to_utc(step.finished_at),
        "compensation_started_at": to_utc(step.compensation_started_at),
        "compensated_at": to_utc(step.compensated_at),
    }


def history_row(saga_id: str, at: datetime, entry: HistoryEntry) -> dict[str, Any]:
    return {
        "saga_id": saga_id,
        "at": to_utc(at),
        "event": entry.event.value,
        "from_state": entry.from_state.value if entry.from_state else None,
        "to_state": entry.to_state.value,
        "step": entry.step,
        "detail": entry.detail,
    }


def event_row(saga_id: str, at: datetime, event: PublishEvent) -> dict[str, Any]:
    return {
        "saga_id": saga_id,
        "name": event.name,
        "payload": event.payload,
        "created_at": to_utc(at),
        "published_at": None,
    }


def insert_history(
    conn: Connection, saga_id: str, now: datetime, entries: Sequence[HistoryEntry]
) -> None:
    if entries:
        conn.execute(history.insert(), [history_row(saga_id, now, e) for e in entries])


def saga_from_row(row: Any, step_records: list[StepRecord]) -> SagaRecord:
    return SagaRecord(
        saga_id=row["id"],
        saga_type=row["saga_type"],
        state=SagaState(row["state"]),
        data=row["data"],
        steps=tuple(step_records),
        version=row["version"],
        current_step=row["current_step"],
        error=ErrorInfo.from_json(row["error"]) if row["error"] else None,
        created_at=aware(row["created_at"]),
        updated_at=aware(row["updated_at"]),
        finished_at=aware(row["finished_at"]),
        cancel_requested_at=aware(row["cancel_requested_at"]),
        deadline_at=aware(row["deadline_at"]),
    )


def event_from_row(row: Any) -> EventRow:
    return EventRow(
        id=row["id"],
        saga_id=row["saga_id"],
        name=row["name"],
        payload=row["payload"],
        created_at=aware(row["created_at"]) or utcnow(),
        published_at=aware(row["published_at"]),
    )


def step_from_row(row: Any) -> StepRecord:
    return StepRecord(
        position=row["position"],
        name=row["name"],
        action=row["action"],
        compensation=row["compensation"],
        queue=row["queue"],
        compensation_queue=row["compensation_queue"],
        compensate_on_failure=bool(row["compensate_on_failure"]),
        retry=row["retry"],
        compensation_retry=row["compensation_retry"],
        timeout=row["timeout"],
        on_timeout=OnTimeout(row["on_timeout"]) if row["on_timeout"] else None,
        pivot=bool(row["pivot"]),
        retriable=bool(row["retriable"]),
        verify=row["verify"],
        verify_attempts=row["verify_attempts"],
        verify_task_id=row["verify_task_id"],
        deadline_at=aware(row["deadline_at"]),
        status=StepStatus(row["status"]),
        result=row["result"],
        error=ErrorInfo.from_json(row["error"]) if row["error"] else None,
        attempts=row["attempts"],
        compensation_attempts=row["compensation_attempts"],
        task_id=row["task_id"],
        compensation_task_id=row["compensation_task_id"],
        started_at=aware(row["started_at"]),
        finished_at=aware(row["finished_at"]),
        compensation_started_at=aware(row["compensation_started_at"]),
        compensated_at=aware(row["compensated_at"]),
    )
