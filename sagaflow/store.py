"""The SQL saga store: every read and write of saga state. Knows nothing of Celery.

Writes use optimistic versioning (`UPDATE ... WHERE version = :seen`), which behaves the same on
SQLite and PostgreSQL: of two processes applying events to one saga, one wins and the other gets
ConcurrencyConflict, reloads, and finds its event already applied. Driver errors that mean "the
database is not reachable" become StoreUnavailable so callers can retry them at the boundary.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine

from sagaflow.definitions import SagaState, StepStatus
from sagaflow.errors import ConcurrencyConflict, SagaNotFound, StoreUnavailable
from sagaflow.machine import (
    ErrorInfo,
    HistoryEntry,
    Ignored,
    PublishEvent,
    SagaRecord,
    StepRecord,
    Transition,
)
from sagaflow.schema import events, history, sagas, steps

TERMINAL_STATES = [s.value for s in SagaState if s.is_terminal]
# Step statuses whose deadline_at is a live timer (ix_sagaflow_steps_deadline serves the lookup).
TIMER_STATUSES = [
    StepStatus.EXECUTING.value,
    StepStatus.WAITING_RETRY.value,
    StepStatus.VERIFYING.value,
]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite keeps the wall-clock digits and drops the offset: store every instant as UTC.
    if value is not None and value.tzinfo is not None:
        return value.astimezone(timezone.utc)
    return value


def _aware(value: datetime | None) -> datetime | None:
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


def mask_url(url: str) -> str:
    """The URL with its password replaced, for anything printed or logged."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


class SagaStore:
    """Reads and writes saga state in one SQL database (SQLite or PostgreSQL)."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self._echo = echo
        self._engine: Engine | None = None
        self._engine_pid: int | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SagaStore({mask_url(self.url)!r})"

    @property
    def engine(self) -> Engine:
        # Engines are created lazily and re-created after fork: a pool inherited from a parent
        # process (Celery's prefork pool) would share sockets between processes.
        pid = os.getpid()
        if self._engine is None or self._engine_pid != pid:
            with self._lock:
                if self._engine is None or self._engine_pid != pid:
                    if self._engine is not None:
                        self._engine.dispose(close=False)
                    self._engine = _create_engine(self.url, self._echo)
                    self._engine_pid = pid
        return self._engine

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction (an immediate one on SQLite: the write lock is taken at BEGIN)."""
        with self._connect() as conn:
            conn = conn.execution_options(**{_WRITE_OPTION: True})
            with conn.begin():
                yield conn

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            if "no such table" in str(exc.orig):
                raise StoreUnavailable(
                    f"saga store {mask_url(self.url)} has no sagaflow tables: run "
                    "`sagaflow db upgrade`"
                ) from exc
            raise StoreUnavailable(
                f"saga store {mask_url(self.url)} unavailable: {exc.orig}"
            ) from exc
        except sa.exc.ProgrammingError as exc:
            if getattr(exc.orig, "sqlstate", None) == "42P01":  # undefined_table
                raise StoreUnavailable(
                    f"saga store {mask_url(self.url)} has no sagaflow tables: run "
                    "`sagaflow db upgrade`"
                ) from exc
            raise
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise StoreUnavailable(
                    f"saga store {mask_url(self.url)} connection lost: {exc.orig}"
                ) from exc
            raise

    def connect(self) -> AbstractContextManager[Connection]:
        """A connection for read-only queries kept elsewhere (sagaflow.stats), with driver
        errors mapped to StoreUnavailable as everywhere in the store."""
        return self._connect()

    # -- schema --------------------------------------------------------------------------------

    def upgrade(self, revision: str = "head") -> None:
        """Apply sagaflow's Alembic migrations up to `revision`."""
        from sagaflow.migrate import upgrade

        upgrade(self, revision)

    # -- writes --------------------------------------------------------------------------------

    def create(self, saga: SagaRecord, history_entries: Sequence[HistoryEntry] = ()) -> bool:
        """Insert a new saga and its steps. False if a saga with this id already exists."""
        now = saga.created_at or utcnow()
        try:
            with self._write() as conn:
                conn.execute(sagas.insert().values(**_saga_row(saga)))
                if saga.steps:
                    conn.execute(steps.insert(), [_step_row(saga.saga_id, s) for s in saga.steps])
                _insert_history(conn, saga.saga_id, now, history_entries)
        except sa.exc.IntegrityError:
            return False
        return True

    def commit(
        self,
        before: SagaRecord,
        after: SagaRecord,
        changed_steps: Sequence[int] | frozenset[int],
        history_entries: Sequence[HistoryEntry],
        published: Sequence[PublishEvent] = (),
    ) -> list[int]:
        """Store a transition atomically if nobody else changed the saga since `before`.

        Returns the ids of the event rows recorded. Raises ConcurrencyConflict if the saga's
        version moved.
        """
        with self._write() as conn:
            return _write_transition(conn, before, after, changed_steps, history_entries, published)

    def transition(
        self, saga_id: str, decide: Callable[[SagaRecord], Transition | Ignored]
    ) -> Decision:
        """Load a saga, let `decide` compute its transition, and store it, in one transaction.

        The saga row is locked for the transaction (FOR UPDATE on PostgreSQL, an immediate
        write transaction on SQLite), so concurrent deciders queue up instead of conflicting;
        the version check stays as a guard. `decide` must be pure: it may run again.
        """
        with self._write() as conn:
            saga = _load(conn, saga_id, lock=True)
            if saga is None:
                return Decision(None, None, [])
            outcome = decide(saga)
            if isinstance(outcome, Ignored):
                return Decision(saga, outcome, [])
            publishes = [c for c in outcome.commands if isinstance(c, PublishEvent)]
            event_ids = _write_transition(
                conn, saga, outcome.saga, outcome.changed_steps, outcome.history, publishes
            )
            return Decision(saga, outcome, event_ids)

    def record_ignored(self, saga_id: str, step: str | None, detail: dict[str, Any]) -> None:
        """Note an outcome that changed nothing (duplicate, late or forged) in the history."""
        with self._write() as conn:
            state = conn.execute(
                sa.select(sagas.c.state).where(sagas.c.id == saga_id)
            ).scalar_one_or_none()
            _insert_history(
                conn,
                saga_id,
                utcnow(),
                [
                    HistoryEntry(
                        "outcome_ignored",
                        None,
                        SagaState(state) if state else SagaState.REJECTED,
                        step,
                        detail,
                    )
                ],
            )

    def mark_published(self, event_ids: Sequence[int]) -> None:
        if not event_ids:
            return
        with self._write() as conn:
            conn.execute(
                events.update()
                .where(events.c.id.in_(list(event_ids)))
                .values(published_at=utcnow())
            )

    # -- reads ---------------------------------------------------------------------------------

    def load(self, saga_id: str) -> SagaRecord | None:
        with self._connect() as conn:
            return _load(conn, saga_id, lock=False)

    def get(self, saga_id: str) -> SagaRecord:
        saga = self.load(saga_id)
        if saga is None:
            raise SagaNotFound(f"no saga {saga_id!r} in the store")
        return saga

    def list_sagas(
        self,
        *,
        state: SagaState | str | None = None,
        saga_type: str | None = None,
        since: datetime | None = None,
        id_prefix: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[SagaRecord]:
        """Sagas newest first, without their steps (load one to see them). `since` keeps those
        created at or after it; `id_prefix` those whose id starts with it."""
        query = sa.select(sagas).order_by(sagas.c.created_at.desc(), sagas.c.id.desc())
        if state is not None:
            query = query.where(sagas.c.state == SagaState(state).value)
        if saga_type is not None:
            query = query.where(sagas.c.saga_type == saga_type)
        if since is not None:
            query = query.where(sagas.c.created_at >= _utc(since))
        if id_prefix:
            query = query.where(sagas.c.id.startswith(id_prefix, autoescape=True))
        query = query.limit(limit).offset(offset)
        with self._connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [_saga_from_row(r, []) for r in rows]

    def stalled(self, before: datetime, limit: int = 500) -> list[str]:
        """Ids of running sagas whose last change is older than `before`, oldest first."""
        running = [SagaState.STARTED.value, SagaState.PENDING.value, SagaState.COMPENSATING.value]
        query = (
            sa.select(sagas.c.id)
            .where(sagas.c.state.in_(running), sagas.c.updated_at < _utc(before))
            .order_by(sagas.c.updated_at)
            .limit(limit)
        )
        with self._connect() as conn:
            return [row[0] for row in conn.execute(query)]

    def timed_out(self, now: datetime, limit: int = 500) -> list[tuple[str, int]]:
        """(saga id, position) of steps whose timer is due: executing actions past their
        deadline, retriable steps due to be sent again, verify tasks that did not answer."""
        query = (
            sa.select(steps.c.saga_id, steps.c.position)
            .where(
                steps.c.status.in_(TIMER_STATUSES),
                steps.c.deadline_at < _utc(now),
            )
            .order_by(steps.c.deadline_at)
            .limit(limit)
        )
        with self._connect() as conn:
            return [(row[0], int(row[1])) for row in conn.execute(query)]

    def overdue(self, now: datetime, limit: int = 500) -> list[str]:
        """Ids of sagas running forward past their deadline and not being stopped yet."""
        query = (
            sa.select(sagas.c.id)
            .where(
                sagas.c.state == SagaState.PENDING.value,
                sagas.c.deadline_at < _utc(now),
                sagas.c.cancel_requested_at.is_(None),
            )
            .order_by(sagas.c.deadline_at)
            .limit(limit)
        )
        with self._connect() as conn:
            return [row[0] for row in conn.execute(query)]

    def unpublished_events(self, before: datetime, limit: int = 500) -> list[EventRow]:
        """Recorded outcome events never marked published, created before `before`."""
        query = (
            sa.select(events)
            .where(events.c.published_at.is_(None), events.c.created_at < _utc(before))
            .order_by(events.c.created_at)
            .limit(limit)
        )
        with self._connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [_event_from_row(r) for r in rows]

    def count_by_state(self, saga_ids: Sequence[str] | None = None) -> dict[str, int]:
        query = sa.select(sagas.c.state, sa.func.count()).group_by(sagas.c.state)
        if saga_ids is not None:
            query = query.where(sagas.c.id.in_(list(saga_ids)))
        with self._connect() as conn:
            return {state: int(n) for state, n in conn.execute(query).all()}

    def history(self, saga_id: str) -> list[HistoryRow]:
        with self._connect() as conn:
            rows = (
                conn.execute(
                    sa.select(history).where(history.c.saga_id == saga_id).order_by(history.c.id)
                )
                .mappings()
                .all()
            )
        return [
            HistoryRow(
                id=r["id"],
                saga_id=r["saga_id"],
                at=_aware(r["at"]) or utcnow(),
                event=r["event"],
                from_state=r["from_state"],
                to_state=r["to_state"],
                step=r["step"],
                detail=r["detail"],
            )
            for r in rows
        ]

    def events(self, saga_id: str) -> list[EventRow]:
        with self._connect() as conn:
            rows = (
                conn.execute(
                    sa.select(events).where(events.c.saga_id == saga_id).order_by(events.c.id)
                )
                .mappings()
                .all()
            )
        return [_event_from_row(r) for r in rows]

    def ping(self) -> None:
        with self._connect() as conn:
            conn.execute(sa.text("SELECT 1"))


@dataclass(frozen=True)
class Decision:
    """What `SagaStore.transition` did: the saga as loaded, the outcome, recorded event ids."""

    saga: SagaRecord | None
    outcome: Transition | Ignored | None
    event_ids: list[int]


_WRITE_OPTION = "sagaflow_write"
_SAGA_COLUMNS = [c.label(f"saga_{c.name}") for c in sagas.c]
_STEP_COLUMNS = [c.label(f"step_{c.name}") for c in steps.c]


def _load(conn: Connection, saga_id: str, *, lock: bool) -> SagaRecord | None:
    """The saga and its steps in one query; with `lock`, after taking the saga's row lock.

    The lock is a statement of its own: under READ COMMITTED, a statement that waited for a
    row lock re-reads only the locked row, so a join locking the saga would return the steps
    as they were before the lock holder committed.
    """
    # SQLite needs no lock statement: BEGIN IMMEDIATE already serialises writers.
    locking = lock and conn.dialect.name != "sqlite"
    if locking and conn.execute(_LOCK_SAGA, {"saga_id": saga_id}).first() is None:
        return None
    rows = conn.execute(_LOAD_SAGA, {"saga_id": saga_id}).mappings().all()
    if not rows:
        return None
    saga_row = {c.name: rows[0][f"saga_{c.name}"] for c in sagas.c}
    step_records = [
        _step_from_row({c.name: row[f"step_{c.name}"] for c in steps.c})
        for row in rows
        if row["step_position"] is not None
    ]
    return _saga_from_row(saga_row, step_records)


# Hot-path statements are built once: building a statement costs more Python time than
# running it (SQLAlchemy caches the compiled form by the statement's structure).
_LOCK_SAGA = sa.select(sagas.c.id).where(sagas.c.id == sa.bindparam("saga_id")).with_for_update()
_LOAD_SAGA = (
    sa.select(*_SAGA_COLUMNS, *_STEP_COLUMNS)
    .select_from(sagas.outerjoin(steps, steps.c.saga_id == sagas.c.id))
    .where(sagas.c.id == sa.bindparam("saga_id"))
    .order_by(steps.c.position)
)
_UPDATE_SAGA = sagas.update().where(
    sagas.c.id == sa.bindparam("key_id"), sagas.c.version == sa.bindparam("key_version")
)
# Never change after the saga is recorded: left out of every update (the input can be large).
_FIXED_SAGA_COLUMNS = ("id", "saga_type", "data", "created_at")
_UPDATE_STEP = steps.update().where(
    steps.c.saga_id == sa.bindparam("key_saga_id"),
    steps.c.position == sa.bindparam("key_position"),
)


def _write_transition(
    conn: Connection,
    before: SagaRecord,
    after: SagaRecord,
    changed_steps: Sequence[int] | frozenset[int],
    history_entries: Sequence[HistoryEntry],
    published: Sequence[PublishEvent],
) -> list[int]:
    now = after.updated_at or utcnow()
    row = _saga_row(after)
    for column in _FIXED_SAGA_COLUMNS:
        del row[column]
    row.update(version=before.version + 1, key_id=before.saga_id, key_version=before.version)
    updated = conn.execute(_UPDATE_SAGA, row)
    if updated.rowcount != 1:
        raise ConcurrencyConflict(f"saga {before.saga_id} changed since version {before.version}")
    if changed_steps:
        rows = []
        for position in sorted(changed_steps):
            row = _step_row(after.saga_id, after.steps[position])
            del row["saga_id"], row["position"]
            rows.append({**row, "key_saga_id": after.saga_id, "key_position": position})
        conn.execute(_UPDATE_STEP, rows)
    _insert_history(conn, after.saga_id, now, history_entries)
    event_ids: list[int] = []
    for event in published:
        result = conn.execute(
            events.insert().values(
                saga_id=after.saga_id,
                name=event.name,
                payload=event.payload,
                created_at=_utc(now),
                published_at=None,
            )
        )
        pk = result.inserted_primary_key
        if pk is not None:
            event_ids.append(int(pk[0]))
    return event_ids


def _create_engine(url: str, echo: bool) -> Engine:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            directory = os.path.dirname(os.path.abspath(database))
            if not os.path.isdir(directory):
                raise StoreUnavailable(
                    f"saga store {mask_url(url)} unavailable: directory {directory} does not exist"
                )
        engine = sa.create_engine(url, echo=echo, connect_args={"timeout": 30})

        @sa_event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # sqlite3's own implicit BEGIN is deferred: a reader that later writes can fail at
            # once with SQLITE_BUSY. sagaflow emits BEGIN itself (see _sqlite_begin).
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            # WAL lets readers (CLI, client.wait) run while the orchestrator writes.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @sa_event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # Write transactions take the write lock up front and wait (busy_timeout) for it.
            immediate = conn.get_execution_options().get(_WRITE_OPTION)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    # No pre-ping round trip per checkout: a connection that went stale fails its statement,
    # the caller gets StoreUnavailable and retries on a fresh connection.
    return sa.create_engine(url, echo=echo, pool_size=5, max_overflow=5)


def _saga_row(saga: SagaRecord) -> dict[str, Any]:
    return {
        "id": saga.saga_id,
        "saga_type": saga.saga_type,
        "state": saga.state.value,
        "data": saga.data,
        "current_step": saga.current_step,
        "version": saga.version,
        "error": saga.error.to_json() if saga.error else None,
        "created_at": _utc(saga.created_at) or utcnow(),
        "updated_at": _utc(saga.updated_at) or utcnow(),
        "finished_at": _utc(saga.finished_at),
        "cancel_requested_at": _utc(saga.cancel_requested_at),
        "deadline_at": _utc(saga.deadline_at),
    }


def _step_row(saga_id: str, step: StepRecord) -> dict[str, Any]:
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
        "on_timeout": step.on_timeout,
        "pivot": step.pivot,
        "retriable": step.retriable,
        "verify": step.verify,
        "verify_attempts": step.verify_attempts,
        "verify_task_id": step.verify_task_id,
        "deadline_at": _utc(step.deadline_at),
        "status": step.status.value,
        "result": step.result,
        "error": step.error.to_json() if step.error else None,
        "attempts": step.attempts,
        "compensation_attempts": step.compensation_attempts,
        "task_id": step.task_id,
        "compensation_task_id": step.compensation_task_id,
        "started_at": _utc(step.started_at),
        "finished_at": _utc(step.finished_at),
        "compensation_started_at": _utc(step.compensation_started_at),
        "compensated_at": _utc(step.compensated_at),
    }


def _insert_history(
    conn: Connection, saga_id: str, now: datetime, entries: Sequence[HistoryEntry]
) -> None:
    if not entries:
        return
    conn.execute(
        history.insert(),
        [
            {
                "saga_id": saga_id,
                "at": _utc(now),
                "event": e.event,
                "from_state": e.from_state.value if e.from_state else None,
                "to_state": e.to_state.value,
                "step": e.step,
                "detail": e.detail,
            }
            for e in entries
        ],
    )


def _saga_from_row(row: Any, step_records: list[StepRecord]) -> SagaRecord:
    return SagaRecord(
        saga_id=row["id"],
        saga_type=row["saga_type"],
        state=SagaState(row["state"]),
        data=row["data"],
        steps=tuple(step_records),
        version=row["version"],
        current_step=row["current_step"],
        error=ErrorInfo.from_json(row["error"]) if row["error"] else None,
        created_at=_aware(row["created_at"]),
        updated_at=_aware(row["updated_at"]),
        finished_at=_aware(row["finished_at"]),
        cancel_requested_at=_aware(row["cancel_requested_at"]),
        deadline_at=_aware(row["deadline_at"]),
    )


def _event_from_row(row: Any) -> EventRow:
    return EventRow(
        id=row["id"],
        saga_id=row["saga_id"],
        name=row["name"],
        payload=row["payload"],
        created_at=_aware(row["created_at"]) or utcnow(),
        published_at=_aware(row["published_at"]),
    )


def _step_from_row(row: Any) -> StepRecord:
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
        on_timeout=row["on_timeout"],
        pivot=bool(row["pivot"]),
        retriable=bool(row["retriable"]),
        verify=row["verify"],
        verify_attempts=row["verify_attempts"],
        verify_task_id=row["verify_task_id"],
        deadline_at=_aware(row["deadline_at"]),
        status=StepStatus(row["status"]),
        result=row["result"],
        error=ErrorInfo.from_json(row["error"]) if row["error"] else None,
        attempts=row["attempts"],
        compensation_attempts=row["compensation_attempts"],
        task_id=row["task_id"],
        compensation_task_id=row["compensation_task_id"],
        started_at=_aware(row["started_at"]),
        finished_at=_aware(row["finished_at"]),
        compensation_started_at=_aware(row["compensation_started_at"]),
        compensated_at=_aware(row["compensated_at"]),
    )
