"""The store's SQL rows: record <-> row conversion, statements built once, the rows of a write.

Which column holds which record field is read from the schema (sagaflow.store.schema) and the
records' annotated fields (sagaflow.core.records): a column is named as its field (the saga's `id`
apart) and converted by the field's type. A column without a field, or a field without a column,
fails at import. Database-neutral: the SQLite and PostgreSQL stores run these their own way.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Union, get_args, get_origin, get_type_hints

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sagaflow.core.machine import (
    ErrorInfo,
    HistoryEntry,
    PublishEvent,
    SagaRecord,
    StepRecord,
)
from sagaflow.core.vocabulary import HistoryEvent
from sagaflow.errors import ConcurrencyConflict
from sagaflow.store.protocol import (
    IGNORED_IN_HISTORY,
    EventRow,
    HistoryRow,
    IgnoredCount,
    IgnoredOutcomes,
    utcnow,
)
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


# -- record fields and their columns --------------------------------------------------------------

Convert = Callable[[Any], Any]


@dataclass(frozen=True)
class Field:
    """A record field, the column holding it, and how its value is written and read (None: as
    it is)."""

    attr: str
    column: str
    label: str  # the column's name in LOAD_SAGA, which joins both tables
    write: Convert | None
    read: Convert | None


def _error_json(error: ErrorInfo | None) -> dict[str, Any] | None:
    return error.to_json() if error else None


def _error_info(data: Any) -> ErrorInfo | None:
    return ErrorInfo.from_json(data) if data else None


def _enum_value(value: enum.Enum | None) -> Any:
    return None if value is None else value.value


def _enum_reader(kind: Callable[[Any], enum.Enum]) -> Convert:
    return lambda value: None if value is None else kind(value)


def _conversions(hint: Any) -> tuple[Convert | None, Convert | None]:
    members = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    if ErrorInfo in members:
        return _error_json, _error_info
    if datetime in members:
        return to_utc, aware
    if bool in members:
        return None, bool  # SQLite may hand back 0 and 1
    for member in members:
        if isinstance(member, enum.EnumMeta):
            return _enum_value, _enum_reader(member)
    return None, None


def record_fields(
    record: type, table: sa.Table, prefix: str, renamed: Mapping[str, str], unstored: set[str]
) -> tuple[Field, ...]:
    """The fields of `record` stored in `table`: every column but the foreign key, each named
    as its field unless `renamed`; `unstored` are the fields kept elsewhere."""
    hints = get_type_hints(record)
    found = []
    for column in table.c:
        if column.foreign_keys:
            continue
        attr = renamed.get(column.name, column.name)
        if attr not in hints:
            raise TypeError(f"column {table.name}.{column.name}: {record.__name__} has no {attr}")
        found.append(
            Field(attr, column.name, f"{prefix}_{column.name}", *_conversions(hints[attr]))
        )
    missing = set(hints) - unstored - {f.attr for f in found}
    if missing:
        raise TypeError(f"{record.__name__} fields without a column in {table.name}: {missing}")
    return tuple(found)


SAGA_FIELDS = record_fields(SagaRecord, sagas, "saga", {"id": "saga_id"}, {"steps"})
STEP_FIELDS = record_fields(StepRecord, steps, "step", {}, set())


def _write(fields: Sequence[Field], record: Any) -> dict[str, Any]:
    row = {}
    for f in fields:
        value = getattr(record, f.attr)
        row[f.column] = value if f.write is None else f.write(value)
    return row


def _read(fields: Sequence[Field], row: Any, labelled: bool) -> dict[str, Any]:
    values = {}
    for f in fields:
        value = row[f.label if labelled else f.column]
        values[f.attr] = value if f.read is None else f.read(value)
    return values


def saga_row(saga: SagaRecord) -> dict[str, Any]:
    row = _write(SAGA_FIELDS, saga)
    row["created_at"] = row["created_at"] or utcnow()
    row["updated_at"] = row["updated_at"] or utcnow()
    return row


def step_row(saga_id: str, step: StepRecord) -> dict[str, Any]:
    return {"saga_id": saga_id, **_write(STEP_FIELDS, step)}


def saga_from_row(row: Any, step_records: Sequence[StepRecord] = ()) -> SagaRecord:
    return SagaRecord(steps=tuple(step_records), **_read(SAGA_FIELDS, row, labelled=False))


def step_from_row(row: Any) -> StepRecord:
    return StepRecord(**_read(STEP_FIELDS, row, labelled=False))


def saga_from_rows(rows: Sequence[Any]) -> SagaRecord | None:
    """The saga of LOAD_SAGA's rows (one per step, or one with no step), None if there are none."""
    if not rows:
        return None
    step_records = [
        StepRecord(**_read(STEP_FIELDS, row, labelled=True))
        for row in rows
        if row["step_position"] is not None
    ]
    return SagaRecord(steps=tuple(step_records), **_read(SAGA_FIELDS, rows[0], labelled=True))


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


def history_from_row(row: Any) -> HistoryRow:
    return HistoryRow(
        id=row["id"],
        saga_id=row["saga_id"],
        at=aware(row["at"]) or utcnow(),
        event=row["event"],
        from_state=row["from_state"],
        to_state=row["to_state"],
        step=row["step"],
        detail=row["detail"],
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


# -- statements ----------------------------------------------------------------------------------

# Hot-path statements are built once: building a statement costs more Python time than
# running it (SQLAlchemy caches the compiled form by the statement's structure).
LOAD_SAGA = (
    sa.select(
        *(sagas.c[f.column].label(f.label) for f in SAGA_FIELDS),
        *(steps.c[f.column].label(f.label) for f in STEP_FIELDS),
    )
    .select_from(sagas.outerjoin(steps, steps.c.saga_id == sagas.c.id))
    .where(sagas.c.id == sa.bindparam("saga_id"))
    .order_by(steps.c.position)
)
LOAD_LABELS = [c.name for c in LOAD_SAGA.selected_columns]
UPDATE_SAGA = sagas.update().where(
    sagas.c.id == sa.bindparam("key_id"), sagas.c.version == sa.bindparam("key_version")
)
# Never change after the saga is recorded: left out of every update (the input can be large).
FIXED_SAGA_COLUMNS = ("id", "saga_type", "data", "created_at")
UPDATE_STEP = steps.update().where(
    steps.c.saga_id == sa.bindparam("key_saga_id"),
    steps.c.position == sa.bindparam("key_position"),
)
# The parameters of each write, in the order their statements are compiled with.
SAGA_UPDATE_KEYS = [c.name for c in sagas.c if c.name not in FIXED_SAGA_COLUMNS]
SAGA_UPDATE_KEYS += ["key_id", "key_version"]
STEP_UPDATE_KEYS = [c.name for c in steps.c if c.name not in ("saga_id", "position")]
STEP_UPDATE_KEYS += ["key_saga_id", "key_position"]
HISTORY_KEYS = [c.name for c in history.c if not c.primary_key]
EVENT_KEYS = [c.name for c in events.c if not c.primary_key]


@dataclass(frozen=True)
class TransitionRows:
    """A transition's writes: the saga's update (keyed by id and the version it was decided
    on), its steps' updates, its new history and outcome events, and for a saga being started
    its new steps."""

    saga: dict[str, Any]
    steps: list[dict[str, Any]]
    history: list[dict[str, Any]]
    events: list[dict[str, Any]]
    new_steps: Sequence[dict[str, Any]] = ()

    def conflict(self) -> ConcurrencyConflict:
        return ConcurrencyConflict(
            f"saga {self.saga['key_id']} changed since version {self.saga['key_version']}"
        )


def transition_rows(
    before: SagaRecord,
    after: SagaRecord,
    changed_steps: Sequence[int] | frozenset[int],
    history_entries: Sequence[HistoryEntry],
    published: Sequence[PublishEvent],
    new_steps: Sequence[dict[str, Any]] = (),
) -> TransitionRows:
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
    return TransitionRows(
        saga=row,
        steps=step_updates,
        history=[history_row(after.saga_id, now, e) for e in history_entries],
        events=[event_row(after.saga_id, now, e) for e in published],
        new_steps=new_steps,
    )


def insert_history(
    conn: Connection, saga_id: str, now: datetime, entries: Sequence[HistoryEntry]
) -> None:
    if entries:
        conn.execute(history.insert(), [history_row(saga_id, now, e) for e in entries])


# -- ignored outcomes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IgnoredStatements:
    """Count an ignored outcome for its saga, then for its step and kind, then note it in the
    history if the saga's count is still within IGNORED_IN_HISTORY (parameters: saga_id, at,
    step, step_key, outcome, detail). The saga's counter goes first: its row lock queues up
    concurrent notes on one saga, so the bound is exact."""

    per_saga: Any
    per_step: Any
    noted: Any


def ignored_statements(insert: Callable[[sa.Table], Any]) -> IgnoredStatements:
    """The statements, built with a dialect's `insert` (its ON CONFLICT DO UPDATE). No
    RETURNING: SQLite has it only since 3.35; PostgreSQL's pipelined path adds it."""
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
    return IgnoredStatements(per_saga, per_step, noted)


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
