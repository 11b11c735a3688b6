"""The SQL saga store: every read and write of saga state, on SQLAlchemy. Knows nothing of Celery.

SqlSagaStore holds what both databases share: the transition protocol, the queries, the engine's
life and the mapping of driver errors. Each database's own ways are a subclass in a module of its
own (sagaflow.store.sqlite, sagaflow.store.postgres); sagaflow.store.factory.open_store picks one.

A transition takes the saga's row lock for its transaction, so concurrent writers of one saga
queue up on it instead of conflicting; every write also checks the saga's version (`UPDATE ...
WHERE version = :seen`), which refuses a transition decided on a state somebody else changed.
Driver errors that mean "the database is not reachable" become StoreUnavailable so callers can
retry them at the boundary.
"""

from __future__ import annotations

import abc
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine

from sagaflow.core.definitions import SagaState
from sagaflow.core.machine import HistoryEntry, Ignored, PublishEvent, SagaRecord, Transition
from sagaflow.core.search import FieldMatch
from sagaflow.errors import (
    ConcurrencyConflict,
    SagaNotFound,
    StoreNotMigrated,
    StoreUnavailable,
)
from sagaflow.store import migrate, queries
from sagaflow.store.cache import REMEMBERED_SAGAS, RememberedSagas, check_folder, report_difference
from sagaflow.store.protocol import (
    IGNORED_IN_HISTORY,
    Decide,
    Decision,
    EventRow,
    HistoryRow,
    IgnoredOutcomes,
    utcnow,
)
from sagaflow.store.rows import (
    LOAD_SAGA,
    UPDATE_SAGA,
    UPDATE_STEP,
    IgnoredStatements,
    TransitionRows,
    event_from_row,
    history_from_row,
    history_row,
    ignored_params,
    load_ignored,
    saga_from_row,
    saga_from_rows,
    saga_row,
    step_row,
    to_utc,
    transition_rows,
)
from sagaflow.store.schema import events, history, ignored, sagas, steps
from sagaflow.urls import mask_url

# The execution option a write transaction's connection carries (SQLite begins it IMMEDIATE).
WRITE_OPTION = "sagaflow_write"


class SqlSagaStore(abc.ABC):
    """Reads and writes saga state in one SQL database (a subclass per kind of database)."""

    # Stores of this process that hold an engine, for dispose_all.
    _connected: ClassVar[weakref.WeakSet[SqlSagaStore]] = weakref.WeakSet()
    _connected_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, url: str, *, echo: bool = False, remember: int = REMEMBERED_SAGAS) -> None:
        self.url = url
        self._echo = echo
        self._engine: Engine | None = None
        self._engine_pid: int | None = None
        self._lock = threading.Lock()
        self._remembered = RememberedSagas(remember)

    def __repr__(self) -> str:
        return f"SagaStore({mask_url(self.url)!r})"

    # -- what each database does its own way ---------------------------------------------------

    @abc.abstractmethod
    def _create_engine(self) -> Engine:
        """A new engine on self.url, set up for this database."""

    @abc.abstractmethod
    def _lock_saga(self, conn: Connection, saga_id: str) -> bool:
        """Take the saga's row lock in a write transaction; False if there is no such saga."""

    @abc.abstractmethod
    def _ignored_statements(self) -> IgnoredStatements:
        """sagaflow.store.rows.ignored_statements, built with this database's insert."""

    @abc.abstractmethod
    def _missing_tables(self, exc: sa.exc.DBAPIError) -> bool:
        """Whether the error says sagaflow's tables are not there."""

    @abc.abstractmethod
    def _input_matches(self, match: FieldMatch) -> sa.ColumnElement[bool]:
        """A condition on sagas.c.data: the input holds one of match.values at match.path."""

    def ensure_database(self) -> None:
        return  # a server's database is its operator's to make

    def migration_connection(self) -> AbstractContextManager[Connection]:
        """A connection in a transaction for Alembic to migrate the database on."""
        return self.engine.begin()

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        with self._connect() as conn, conn.begin():
            yield conn

    # -- engine and connections ----------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        # Engines are created lazily and re-created after fork: a pool inherited from a parent
        # process (Celery's prefork pool) would share sockets between processes. Read once:
        # dispose() may clear the attribute meanwhile (the caller still gets an engine).
        pid = os.getpid()
        engine = self._engine
        if engine is None or self._engine_pid != pid:
            with self._lock:
                engine = self._engine
                if engine is None or self._engine_pid != pid:
                    if engine is not None:
                        engine.dispose(close=False)
                    engine = self._engine = self._create_engine()
                    self._engine_pid = pid
                    self.forget()
                    # A new connection may reach another server (a failover, a restore) whose
                    # sagas went back to versions this process remembers with other contents.
                    sa_event.listen(engine, "connect", lambda *_: self.forget())
                    with SqlSagaStore._connected_lock:
                        SqlSagaStore._connected.add(self)
        return engine

    def dispose(self) -> None:
        with self._lock:
            engine, self._engine = self._engine, None
        with SqlSagaStore._connected_lock:
            SqlSagaStore._connected.discard(self)
        if engine is not None:
            # An engine inherited through fork: its sockets are the parent's to close.
            engine.dispose(close=self._engine_pid == os.getpid())

    @classmethod
    def dispose_all(cls) -> int:
        """Close the idle connections of every store in this process (a store still in use
        connects again when next used); how many stores had connections. For shutdown hooks
        and test suites, where stores left open would hold a server's connection slots."""
        with cls._connected_lock:
            stores = list(cls._connected)
        for store in stores:
            store.dispose()
        return len(stores)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction (see WRITE_OPTION)."""
        with self._connect() as conn:
            conn = conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                yield conn

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            self.forget()
            if self._missing_tables(exc):
                raise self._no_tables() from exc
            raise StoreUnavailable(
                f"saga store {mask_url(self.url)} unavailable: {exc.orig}"
            ) from exc
        except sa.exc.ProgrammingError as exc:
            if self._missing_tables(exc):
                raise self._no_tables() from exc
            raise
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                self.forget()
                raise StoreUnavailable(
                    f"saga store {mask_url(self.url)} connection lost: {exc.orig}"
                ) from exc
            raise

    def _no_tables(self) -> StoreNotMigrated:
        return StoreNotMigrated(
            f"saga store {mask_url(self.url)} has no sagaflow tables: run `sagaflow db upgrade`"
        )

    def connect(self) -> AbstractContextManager[Connection]:
        return self._connect()

    def ping(self) -> None:
        with self._connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def upgrade(self, revision: str = "head") -> None:
        migrate.upgrade(self, revision)

    # -- writes --------------------------------------------------------------------------------

    def create(self, saga: SagaRecord, history_entries: Sequence[HistoryEntry] = ()) -> bool:
        now = saga.created_at or utcnow()
        step_rows = [step_row(saga.saga_id, s) for s in saga.steps]
        try:
            with self._write() as conn:
                entries = [history_row(saga.saga_id, now, e) for e in history_entries]
                self._insert(conn, saga_row(saga), step_rows, entries)
        except sa.exc.IntegrityError:
            return False
        return True

    def _insert(
        self,
        conn: Connection,
        saga: dict[str, Any],
        step_rows: Sequence[dict[str, Any]],
        history_rows: Sequence[dict[str, Any]],
    ) -> None:
        """A new saga, its steps and history (IntegrityError if the id is taken)."""
        conn.execute(sagas.insert().values(**saga))
        if step_rows:
            conn.execute(steps.insert(), list(step_rows))
        if history_rows:
            conn.execute(history.insert(), list(history_rows))

    def commit(
        self,
        before: SagaRecord,
        after: SagaRecord,
        changed_steps: Sequence[int] | frozenset[int],
        history_entries: Sequence[HistoryEntry],
        published: Sequence[PublishEvent] = (),
    ) -> list[int]:
        rows = transition_rows(before, after, changed_steps, history_entries, published)
        with self._write() as conn:
            return self._write_rows(conn, rows)

    def _write_rows(self, conn: Connection, rows: TransitionRows) -> list[int]:
        """Store a transition's rows; the ids of its event rows. ConcurrencyConflict if the
        saga's version moved."""
        updated = conn.execute(UPDATE_SAGA, rows.saga)
        if updated.rowcount != 1:
            raise rows.conflict()
        if rows.new_steps:
            conn.execute(steps.insert(), list(rows.new_steps))
        if rows.steps:
            conn.execute(UPDATE_STEP, rows.steps)
        if rows.history:
            conn.execute(history.insert(), rows.history)
        event_ids: list[int] = []
        for event in rows.events:
            pk = conn.execute(events.insert().values(**event)).inserted_primary_key
            if pk is not None:
                event_ids.append(int(pk[0]))
        return event_ids

    def transition(self, saga_id: str, decide: Decide) -> Decision:
        # A saga remembered as this store last wrote it is decided on without loading it; the
        # write's version check proves it unchanged. Taken once the connection is checked out:
        # a new connection forgets everything.
        from_memory = False
        try:
            with self._write() as conn:
                known = self._remembered.take(saga_id)
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
            self._remembered.keep_written(decision.saga, decision.outcome)
        elif decision.saga is not None:
            self._remembered.keep(decision.saga)  # loaded under the lock: what is stored
        return decision

    def _decide_locked(self, conn: Connection, saga_id: str, decide: Decide) -> Decision:
        saga = self._load(conn, saga_id, lock=True)
        if saga is None:
            return Decision(None, None, [])
        outcome = decide(saga)
        if isinstance(outcome, Ignored):
            return Decision(saga, outcome, [])
        return Decision(saga, outcome, self._write_outcome(conn, saga, outcome))

    def promote(self, saga_id: str, plan: Callable[[SagaRecord], Transition]) -> Decision:
        with self._write() as conn:
            saga = self._load(conn, saga_id, lock=True)
            if saga is None:
                return Decision(None, None, [])
            if saga.state is not SagaState.REQUESTED:
                return Decision(saga, Ignored(f"saga is already {saga.state.value}"), [])
            outcome = plan(saga)
            new_steps = [step_row(saga_id, s) for s in outcome.saga.steps]
            event_ids = self._write_outcome(conn, saga, outcome, frozenset(), new_steps)
        self._remembered.keep_written(saga, outcome)
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
        rows = transition_rows(
            before, outcome.saga, changed_steps, outcome.history, publishes, new_steps
        )
        return self._write_rows(conn, rows)

    def _check_remembered(self, conn: Connection, known: SagaRecord) -> None:
        folder = check_folder()
        if folder:
            report_difference(folder, known, self._load(conn, known.saga_id, lock=False))

    def forget(self) -> None:
        self._remembered.forget()

    def record_ignored(self, saga_id: str, step: str | None, detail: dict[str, Any]) -> int:
        with self._write() as conn:
            return self._note_ignored(conn, ignored_params(saga_id, step, detail, utcnow()))

    def _note_ignored(self, conn: Connection, params: dict[str, Any]) -> int:
        """Count an ignored outcome, noted in the history within the bound; the saga's count,
        this one included."""
        statements = self._ignored_statements()
        conn.execute(statements.per_saga, params)
        counted = sa.select(ignored.c.count).where(ignored.c.saga_id == params["saga_id"])
        count = int(conn.execute(counted).scalar_one())
        conn.execute(statements.per_step, params)
        if count <= IGNORED_IN_HISTORY:
            conn.execute(statements.noted, params)
        return count

    def mark_published(self, event_ids: Sequence[int]) -> None:
        if not event_ids:
            return
        with self._write() as conn:
            self._mark_published(conn, event_ids, utcnow())

    def _mark_published(self, conn: Connection, event_ids: Sequence[int], at: datetime) -> None:
        conn.execute(
            events.update().where(events.c.id.in_(list(event_ids))).values(published_at=at)
        )

    # -- reads ---------------------------------------------------------------------------------

    def _load(self, conn: Connection, saga_id: str, *, lock: bool) -> SagaRecord | None:
        """The saga and its steps; with `lock`, under the saga's row lock."""
        return saga_from_rows(self._saga_rows(conn, saga_id, lock=lock))

    def _saga_rows(self, conn: Connection, saga_id: str, *, lock: bool) -> Sequence[Any]:
        # The lock is a statement of its own: under READ COMMITTED, a statement that waited for
        # a row lock re-reads only the locked row, so a join locking the saga would return the
        # steps as they were before the lock holder committed.
        if lock and not self._lock_saga(conn, saga_id):
            return []
        return conn.execute(LOAD_SAGA, {"saga_id": saga_id}).mappings().all()

    def load(self, saga_id: str) -> SagaRecord | None:
        with self._connect() as conn:
            return self._load(conn, saga_id, lock=False)

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
        where: Sequence[FieldMatch] = (),
        limit: int = 50,
        offset: int = 0,
    ) -> list[SagaRecord]:
        query = queries.list_sagas(
            state=None if state is None else SagaState(state),
            saga_type=saga_type,
            since=since,
            id_prefix=id_prefix,
            input_matches=[self._input_matches(match) for match in where],
            limit=limit,
            offset=offset,
        )
        with self._connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [saga_from_row(r) for r in rows]

    def _ids(self, query: sa.Select[Any]) -> list[str]:
        with self._connect() as conn:
            return [row[0] for row in conn.execute(query)]

    def stalled(self, before: datetime, limit: int = 500) -> list[str]:
        return self._ids(queries.stalled(before, limit))

    def requested(self, before: datetime, limit: int = 500) -> list[str]:
        return self._ids(queries.requested(before, limit))

    def timed_out(self, now: datetime, limit: int = 500) -> list[tuple[str, int]]:
        with self._connect() as conn:
            return [(row[0], int(row[1])) for row in conn.execute(queries.timed_out(now, limit))]

    def overdue(self, now: datetime, limit: int = 500) -> list[str]:
        return self._ids(queries.overdue(now, limit))

    def unpublished_events(self, before: datetime, limit: int = 500) -> list[EventRow]:
        query = (
            sa.select(events)
            .where(events.c.published_at.is_(None), events.c.created_at < to_utc(before))
            .order_by(events.c.created_at)
            .limit(limit)
        )
        with self._connect() as conn:
            return [event_from_row(r) for r in conn.execute(query).mappings().all()]

    def count_by_state(self, saga_ids: Sequence[str] | None = None) -> dict[str, int]:
        query = sa.select(sagas.c.state, sa.func.count()).group_by(sagas.c.state)
        if saga_ids is not None:
            query = query.where(sagas.c.id.in_(list(saga_ids)))
        with self._connect() as conn:
            return {state: int(n) for state, n in conn.execute(query).all()}

    def versions(self, saga_ids: Sequence[str]) -> dict[str, tuple[SagaState, int]]:
        if not saga_ids:
            return {}
        query = sa.select(sagas.c.id, sagas.c.state, sagas.c.version).where(
            sagas.c.id.in_(list(saga_ids))
        )
        with self._connect() as conn:
            return {row.id: (SagaState(row.state), int(row.version)) for row in conn.execute(query)}

    def history(self, saga_id: str) -> list[HistoryRow]:
        query = sa.select(history).where(history.c.saga_id == saga_id).order_by(history.c.id)
        with self._connect() as conn:
            return [history_from_row(r) for r in conn.execute(query).mappings().all()]

    def ignored(self, saga_id: str) -> IgnoredOutcomes:
        with self._connect() as conn:
            return load_ignored(conn, saga_id)

    def events(self, saga_id: str) -> list[EventRow]:
        query = sa.select(events).where(events.c.saga_id == saga_id).order_by(events.c.id)
        with self._connect() as conn:
            return [event_from_row(r) for r in conn.execute(query).mappings().all()]
