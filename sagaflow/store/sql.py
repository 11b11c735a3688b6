"""The SQL saga store: every read and write of saga state. Knows nothing of Celery.

Writes use optimistic versioning (`UPDATE ... WHERE version = :seen`), which behaves the same on
SQLite and PostgreSQL: of two processes applying events to one saga, one wins and the other gets
ConcurrencyConflict, reloads, and finds its event already applied. Driver errors that mean "the
database is not reachable" become StoreUnavailable so callers can retry them at the boundary.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine

from sagaflow.core.definitions import SagaState, StepStatus
from sagaflow.core.machine import (
    HistoryEntry,
    Ignored,
    PublishEvent,
    SagaRecord,
    Transition,
)
from sagaflow.errors import ConcurrencyConflict, SagaNotFound, StoreUnavailable
from sagaflow.store import postgres as store_pg
from sagaflow.store.rows import (
    IGNORED_IN_HISTORY as IGNORED_IN_HISTORY,
)
from sagaflow.store.rows import (
    EventRow as EventRow,
)
from sagaflow.store.rows import (
    HistoryRow as HistoryRow,
)
from sagaflow.store.rows import (
    IgnoredCount as IgnoredCount,
)
from sagaflow.store.rows import (
    IgnoredOutcomes as IgnoredOutcomes,
)
from sagaflow.store.rows import (
    aware,
    event_from_row,
    history_row,
    ignored_params,
    insert_history,
    load_ignored,
    load_saga,
    note_ignored,
    saga_from_row,
    saga_row,
    step_row,
    to_utc,
    write_transition,
)
from sagaflow.store.rows import (
    utcnow as utcnow,
)
from sagaflow.store.schema import events, history, sagas, steps
from sagaflow.urls import mask_url as mask_url

TERMINAL_STATES = [s.value for s in SagaState if s.is_terminal]
# Step statuses whose deadline_at is a live timer (ix_sagaflow_steps_deadline serves the lookup).
TIMER_STATUSES = [
    StepStatus.EXECUTING.value,
    StepStatus.WAITING_RETRY.value,
    StepStatus.VERIFYING.value,
]


# Sagas whose last stored state a store keeps in memory (see SagaStore.transition), and the
# JSON bytes of their inputs and results it may hold: a saga past REMEMBERED_SAGA_BYTES is
# always loaded.
REMEMBERED_SAGAS = 2_000
REMEMBERED_BYTES = 32 * 1024 * 1024
REMEMBERED_SAGA_BYTES = 64 * 1024
RECORD_OVERHEAD_BYTES = 3 * 1024  # a saga of 5 steps, without its JSON
# Set to a folder, the store checks every remembered state it decides on against the stored
# one and writes a file there for each difference (the test suite runs with it).
CHECK_REMEMBERED_ENV = "SAGAFLOW_CHECK_REMEMBERED"


class SagaStore:
    """Reads and writes saga state in one SQL database (SQLite or PostgreSQL)."""

    def __init__(self, url: str, *, echo: bool = False, remember: int = REMEMBERED_SAGAS) -> None:
        self.url = url
        self._echo = echo
        self._engine: Engine | None = None
        self._engine_pid: int | None = None
        self._lock = threading.Lock()
        self._remember_limit = remember
        # saga id -> (its state as stored, the bytes it counts for)
        self._remembered: dict[str, tuple[SagaRecord, int]] = {}
        self._remembered_bytes = 0
        self._remembered_lock = threading.Lock()

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
                    self.forget()
                    # A new connection may reach another server (a failover, a restore) whose
                    # sagas went back to versions this process remembers with other contents.
                    sa_event.listen(self._engine, "connect", lambda *_: self.forget())
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
            self.forget()
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
                self.forget()
                raise StoreUnavailable(
                    f"saga store {mask_url(self.url)} connection lost: {exc.orig}"
                ) from exc
            raise

    def connect(self) -> AbstractContextManager[Connection]:
        """A connection for read-only queries kept elsewhere (sagaflow.store.stats), with driver
        errors mapped to StoreUnavailable as everywhere in the store."""
        return self._connect()

    # -- schema --------------------------------------------------------------------------------

    def upgrade(self, revision: str = "head") -> None:
        """Apply sagaflow's Alembic migrations up to `revision`."""
        from sagaflow.store.migrate import upgrade

        upgrade(self, revision)

    # -- writes --------------------------------------------------------------------------------

    def create(self, saga: SagaRecord, history_entries: Sequence[HistoryEntry] = ()) -> bool:
        """Insert a new saga and its steps. False if a saga with this id already exists."""
        now = saga.created_at or utcnow()
        try:
            with self._write() as conn:
                step_rows = [step_row(saga.saga_id, s) for s in saga.steps]
                if store_pg.uses_pipeline(conn):
                    entries = [history_row(saga.saga_id, now, e) for e in history_entries]
                    store_pg.insert(conn, saga_row(saga), step_rows, entries)
                    return True
                conn.execute(sagas.insert().values(**saga_row(saga)))
                if step_rows:
                    conn.execute(steps.insert(), step_rows)
                insert_history(conn, saga.saga_id, now, history_entries)
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
            return write_transition(conn, before, after, changed_steps, history_entries, published)

    def transition(
        self, saga_id: str, decide: Callable[[SagaRecord], Transition | Ignored]
    ) -> Decision:
        """Load a saga, let `decide` compute its transition, and store it, in one transaction.

        The saga row is locked for the transaction (FOR UPDATE on PostgreSQL, an immediate
        write transaction on SQLite), so concurrent deciders queue up instead of conflicting;
        the version check stays as a guard. `decide` must be pure: it may run again.

        A saga this store wrote last is remembered as written, and decided on without loading
        it: the write's version check then proves nobody changed it since. If somebody did, or
        if the remembered state ignores the event (it may be news only to a stale state), the
        saga is loaded and decided on again as above.
        """
        from_memory = False
        try:
            with self._write() as conn:
                # Recalled once the connection is checked out: a new one forgets everything.
                known = self._recall(saga_id)
                if known is not None:
                    outcome = decide(known)
                    if isinstance(outcome, Transition):
                        from_memory = True
                        self._check_remembered(conn, known)
                        event_ids = self._write_outcome(conn, known, outcome)
                        decision = Decision(known, outcome, event_ids)
                if not from_memory:
                    decision = self._decide_locked(conn, saga_id, decide)
        except ConcurrencyConflict:
            if not from_memory:
                raise
            with self._write() as conn:
                decision = self._decide_locked(conn, saga_id, decide)
        if isinstance(decision.outcome, Transition):
            self._remember(decision.saga, decision.outcome)
        elif decision.saga is not None:
            self._keep(decision.saga)  # loaded under the lock: what is stored
        return decision

    def _decide_locked(
        self, conn: Connection, saga_id: str, decide: Callable[[SagaRecord], Transition | Ignored]
    ) -> Decision:
        saga = load_saga(conn, saga_id, lock=True)
        if saga is None:
            return Decision(None, None, [])
        outcome = decide(saga)
        if isinstance(outcome, Ignored):
            return Decision(saga, outcome, [])
        return Decision(saga, outcome, self._write_outcome(conn, saga, outcome))

    def promote(self, saga_id: str, plan: Callable[[SagaRecord], Transition]) -> Decision:
        """Start a saga recorded as `requested`: `plan` turns the stored request into its
        first transition (steps and all, or a rejection), stored in one transaction under the
        same row lock as `transition`, so of concurrent starters exactly one promotes it.

        The Decision's saga is None if no such saga is recorded; its outcome is Ignored if the
        saga is already past `requested` (a duplicate start).
        """
        with self._write() as conn:
            saga = load_saga(conn, saga_id, lock=True)
            if saga is None:
                return Decision(None, None, [])
            if saga.state is not SagaState.REQUESTED:
                return Decision(saga, Ignored(f"saga is already {saga.state.value}"), [])
            outcome = plan(saga)
            new_steps = [step_row(saga_id, s) for s in outcome.saga.steps]
            event_ids = self._write_outcome(conn, saga, outcome, frozenset(), new_steps)
        self._remember(saga, outcome)
        return Decision(saga, outcome, event_ids)

    def _write_outcome(
        self,
        conn: Connection,
        before: SagaRecord,
        outcome: Transition,
        changed_steps: Sequence[int] | frozenset[int] | None = None,
        new_steps: Sequence[dict[str, Any]] = (),
    ) -> list[int]:
        publishes = [c for c in outcome.commands if isinstance(c, PublishEvent)]
        if changed_steps is None:
            changed_steps = outcome.changed_steps
        return write_transition(
            conn, before, outcome.saga, changed_steps, outcome.history, publishes, new_steps
        )

    # -- remembered sagas ----------------------------------------------------------------------

    def _recall(self, saga_id: str) -> SagaRecord | None:
        with self._remembered_lock:
            # Taken, not read: of two threads deciding on one saga, one loads it.
            return self._take(saga_id)

    def _take(self, saga_id: str) -> SagaRecord | None:
        """Remove a remembered saga (the caller holds the lock)."""
        entry = self._remembered.pop(saga_id, None)
        if entry is None:
            return None
        self._remembered_bytes -= entry[1]
        return entry[0]

    def _remember(self, before: SagaRecord | None, outcome: Transition) -> None:
        """Keep the saga as the committed transition stored it: what loading it would give."""
        after = outcome.saga
        if before is None or after.updated_at is None:
            return
        self._keep(
            replace(
                after,
                # write_transition never rewrites these columns, and sets the version itself.
                saga_type=before.saga_type,
                data=before.data,
                created_at=before.created_at,
                version=before.version + 1,
            )
        )

    def _keep(self, saga: SagaRecord) -> None:
        if saga.state.is_terminal or self._remember_limit <= 0:
            return
        try:
            size = RECORD_OVERHEAD_BYTES + len(
                json.dumps([saga.data, [s.result for s in saga.steps]], default=str)
            )
        except (TypeError, ValueError):
            return
        if size > REMEMBERED_SAGA_BYTES:
            return
        with self._remembered_lock:
            self._take(saga.saga_id)
            self._remembered[saga.saga_id] = (saga, size)
            self._remembered_bytes += size
            while (
                len(self._remembered) > self._remember_limit
                or self._remembered_bytes > REMEMBERED_BYTES
            ):
                self._take(next(iter(self._remembered)))

    def forget(self) -> None:
        """Drop every remembered saga (the next transition of each loads it)."""
        with self._remembered_lock:
            self._remembered.clear()
            self._remembered_bytes = 0

    def _check_remembered(self, conn: Connection, known: SagaRecord) -> None:
        folder = os.environ.get(CHECK_REMEMBERED_ENV)
        if not folder:
            return
        stored = load_saga(conn, known.saga_id, lock=False)
        if stored is None or stored.version != known.version or stored == known:
            return  # gone or moved: the version check refuses the write either way
        differences = {
            f.name: [repr(getattr(known, f.name)), repr(getattr(stored, f.name))]
            for f in fields(SagaRecord)
            if getattr(known, f.name) != getattr(stored, f.name)
        }
        path = os.path.join(folder, f"{known.saga_id}-v{known.version}-{os.getpid()}.json")
        with open(path, "w") as out:
            json.dump({"saga_id": known.saga_id, "remembered_vs_stored": differences}, out)

    def record_ignored(self, saga_id: str, step: str | None, detail: dict[str, Any]) -> int:
        """Count an outcome that changed nothing (duplicate, late or forged), by saga and by
        step and kind (detail's "outcome"), and note it in the history while the saga has at
        most IGNORED_IN_HISTORY of them. The saga's count, this one included."""
        with self._write() as conn:
            return note_ignored(conn, ignored_params(saga_id, step, detail, utcnow()))

    def mark_published(self, event_ids: Sequence[int]) -> None:
        if not event_ids:
            return
        with self._write() as conn:
            if store_pg.uses_pipeline(conn):
                store_pg.mark_published(conn, event_ids, utcnow())
                return
            conn.execute(
                events.update()
                .where(events.c.id.in_(list(event_ids)))
                .values(published_at=utcnow())
            )

    # -- reads ---------------------------------------------------------------------------------

    def load(self, saga_id: str) -> SagaRecord | None:
        with self._connect() as conn:
            return load_saga(conn, saga_id, lock=False)

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
            query = query.where(sagas.c.created_at >= to_utc(since))
        if id_prefix:
            query = query.where(sagas.c.id.startswith(id_prefix, autoescape=True))
        query = query.limit(limit).offset(offset)
        with self._connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [saga_from_row(r, []) for r in rows]

    def stalled(self, before: datetime, limit: int = 500) -> list[str]:
        """Ids of running sagas whose last change is older than `before`, oldest first."""
        running = [SagaState.STARTED.value, SagaState.PENDING.value, SagaState.COMPENSATING.value]
        query = (
            sa.select(sagas.c.id)
            .where(sagas.c.state.in_(running), sagas.c.updated_at < to_utc(before))
            .order_by(sagas.c.updated_at)
            .limit(limit)
        )
        with self._connect() as conn:
            return [row[0] for row in conn.execute(query)]

    def requested(self, before: datetime, limit: int = 500) -> list[str]:
        """Ids of sagas recorded as `requested` before `before` and still not started (their
        start message was lost or is late), oldest first."""
        query = (
            sa.select(sagas.c.id)
            .where(sagas.c.state == SagaState.REQUESTED.value, sagas.c.updated_at < to_utc(before))
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
                steps.c.deadline_at < to_utc(now),
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
                sagas.c.deadline_at < to_utc(now),
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
            .where(events.c.published_at.is_(None), events.c.created_at < to_utc(before))
            .order_by(events.c.created_at)
            .limit(limit)
        )
        with self._connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [event_from_row(r) for r in rows]

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
                at=aware(r["at"]) or utcnow(),
                event=r["event"],
                from_state=r["from_state"],
                to_state=r["to_state"],
                step=r["step"],
                detail=r["detail"],
            )
            for r in rows
        ]

    def ignored(self, saga_id: str) -> IgnoredOutcomes:
        """How many outcomes were ignored for the saga (see record_ignored)."""
        with self._connect() as conn:
            return load_ignored(conn, saga_id)

    def events(self, saga_id: str) -> list[EventRow]:
        with self._connect() as conn:
            rows = (
                conn.execute(
                    sa.select(events).where(events.c.saga_id == saga_id).order_by(events.c.id)
                )
                .mappings()
                .all()
            )
        return [event_from_row(r) for r in rows]

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

# How long a SQLite connection waits for another one's lock before it gives up.
SQLITE_LOCK_TIMEOUT = 30.0


def use_wal(dbapi_conn: sqlite3.Connection) -> None:
    """Put the SQLite database in WAL mode (it stays so): readers (CLI, client.wait) then run
    while the orchestrator writes.

    The switch needs the file to itself, and SQLite refuses it at once, without waiting out
    busy_timeout, while another connection writes in rollback-journal mode: a producer that
    connects during the first `sagaflow db upgrade`. So wait for that writer, up to the lock
    timeout; once the file is in WAL mode the switch is not needed again."""
    deadline = time.monotonic() + SQLITE_LOCK_TIMEOUT
    pause = 0.005
    while True:
        cursor = dbapi_conn.cursor()
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        finally:
            cursor.close()
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def create_sqlite_engine(url: str, echo: bool = False) -> Engine:
    """A SQLite engine whose connections wait up to SQLITE_LOCK_TIMEOUT for another one's lock
    and put the file in WAL mode (use_wal)."""
    engine = sa.create_engine(url, echo=echo, connect_args={"timeout": SQLITE_LOCK_TIMEOUT})
    sa_event.listen(engine, "connect", lambda dbapi_conn, _: use_wal(dbapi_conn))
    return engine


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
        engine = create_sqlite_engine(url, echo=echo)

        @sa_event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # sqlite3's own implicit BEGIN is deferred: a reader that later writes can fail at
            # once with SQLITE_BUSY. sagaflow emits BEGIN itself (see _sqlite_begin).
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_LOCK_TIMEOUT * 1000)}")
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
    # Named in pg_stat_activity (unless the URL names it), so operators can tell sagaflow's
    # connections apart.
    connect_args = {} if "application_name" in parsed.query else {"application_name": "sagaflow"}
    engine = sa.create_engine(
        url, echo=echo, pool_size=5, max_overflow=5, connect_args=connect_args
    )
    if parsed.get_backend_name() == "postgresql" and engine.dialect.driver == "psycopg":
        sa_event.listen(engine, "connect", lambda dbapi_conn, _: store_pg.configure(dbapi_conn))
    return engine
