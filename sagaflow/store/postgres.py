"""The saga store on PostgreSQL: row locks (FOR UPDATE), ON CONFLICT upserts, and a hot path of
two round trips per transition (lock and load; write and commit).

Through SQLAlchemy, each statement waits for its reply before the next is sent: a transition
cost eight round trips (BEGIN, lock, load, saga, steps, history, events, COMMIT), and on a
2-core machine each one is a context switch to the server and back. psycopg's pipeline mode
sends several statements before reading any reply. SQLAlchemy reads every result as it
executes, so these statements run on the driver connection, inside the transaction SQLAlchemy
opened; they are compiled once from the same tables. The writes carry their own COMMIT (the
transaction SQLAlchemy then ends is already committed), or roll back with it on any error.
With another driver, or a libpq older than 14, the store runs SQLAlchemy's statements instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import cache
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine

from sagaflow.core.search import FieldMatch
from sagaflow.store.rows import (
    EVENT_KEYS,
    HISTORY_KEYS,
    LOAD_LABELS,
    LOAD_SAGA,
    SAGA_UPDATE_KEYS,
    STEP_UPDATE_KEYS,
    UPDATE_SAGA,
    UPDATE_STEP,
    IgnoredStatements,
    TransitionRows,
    ignored_statements,
)
from sagaflow.store.schema import events, history, ignored, sagas, steps
from sagaflow.store.sql import SqlSagaStore

T = TypeVar("T")

LOCK_SAGA = sa.select(sagas.c.id).where(sagas.c.id == sa.bindparam("saga_id")).with_for_update()
UNDEFINED_TABLE = "42P01"


class PostgresSagaStore(SqlSagaStore):
    """Saga state in a PostgreSQL database; pipelined with psycopg (see uses_pipeline)."""

    def _create_engine(self) -> Engine:
        # No pre-ping round trip per checkout: a connection that went stale fails its
        # statement, the caller gets StoreUnavailable and retries on a fresh connection.
        # Named in pg_stat_activity (unless the URL names it), so operators can tell
        # sagaflow's connections apart.
        named = "application_name" in sa.engine.make_url(self.url).query
        connect_args = {} if named else {"application_name": "sagaflow"}
        engine = sa.create_engine(
            self.url, echo=self._echo, pool_size=5, max_overflow=5, connect_args=connect_args
        )
        if engine.dialect.driver == "psycopg":
            sa_event.listen(engine, "connect", lambda dbapi_conn, _: configure(dbapi_conn))
        return engine

    def _missing_tables(self, exc: sa.exc.DBAPIError) -> bool:
        return getattr(exc.orig, "sqlstate", None) == UNDEFINED_TABLE

    def _input_matches(self, match: FieldMatch) -> sa.ColumnElement[bool]:
        # JSONB containment (@>), which the GIN index on sagas.data (jsonb_path_ops) serves.
        data = sa.type_coerce(sagas.c.data, postgresql.JSONB)
        return sa.or_(*(data.contains(match.nested(value)) for value in match.values))

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        with self._connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def _lock_saga(self, conn: Connection, saga_id: str) -> bool:
        return conn.execute(LOCK_SAGA, {"saga_id": saga_id}).first() is not None

    def _saga_rows(self, conn: Connection, saga_id: str, *, lock: bool) -> Sequence[Any]:
        if lock and uses_pipeline(conn):
            return load_locked(conn, saga_id) or []
        return super()._saga_rows(conn, saga_id, lock=lock)

    def _insert(
        self,
        conn: Connection,
        saga: dict[str, Any],
        step_rows: Sequence[dict[str, Any]],
        history_rows: Sequence[dict[str, Any]],
    ) -> None:
        if uses_pipeline(conn):
            insert(conn, saga, step_rows, history_rows)
        else:
            super()._insert(conn, saga, step_rows, history_rows)

    def _write_rows(self, conn: Connection, rows: TransitionRows) -> list[int]:
        if uses_pipeline(conn):
            return write(conn, rows)
        return super()._write_rows(conn, rows)

    def _ignored_statements(self) -> IgnoredStatements:
        return _ignored()

    def _note_ignored(self, conn: Connection, params: dict[str, Any]) -> int:
        if uses_pipeline(conn):
            return note_ignored(conn, params)
        return super()._note_ignored(conn, params)

    def _mark_published(self, conn: Connection, event_ids: Sequence[int], at: datetime) -> None:
        if uses_pipeline(conn):
            mark_published(conn, event_ids, at)
        else:
            super()._mark_published(conn, event_ids, at)


def uses_pipeline(conn: Connection) -> bool:
    return conn.dialect.driver == "psycopg" and _pipeline_supported()


@cache
def _pipeline_supported() -> bool:
    # Pipeline mode needs libpq 14 or newer (psycopg[binary] bundles one); with an older
    # system libpq the store takes SQLAlchemy's statement-by-statement path.
    import psycopg

    return bool(psycopg.Pipeline.is_supported())


def configure(dbapi_connection: Any) -> None:
    """Per new connection: JSON null, in most of a saga's JSON columns, is read without
    calling the JSON parser (22 parses per load, most of them of `null`)."""
    dbapi_connection.adapters.register_loader("jsonb", _null_first_jsonb_loader())


@cache
def _null_first_jsonb_loader() -> type:
    from psycopg.types.json import JsonbLoader

    class NullFirstJsonbLoader(JsonbLoader):
        def load(self, data: Any) -> Any:
            if data == b"null":
                return None
            return super().load(data)

    return NullFirstJsonbLoader


def _sql(statement: Any, keys: Sequence[str] | None = None) -> str:
    from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect

    dialect = psycopg_dialect.dialect()  # type: ignore[no-untyped-call]
    return str(statement.compile(dialect=dialect, column_keys=keys))


@cache
def _read_statements() -> tuple[str, str]:
    return _sql(LOCK_SAGA), _sql(LOAD_SAGA)


@cache
def _write_statements() -> dict[str, str]:
    return {
        "new_saga": _sql(sagas.insert(), [c.name for c in sagas.c]),
        "new_step": _sql(steps.insert(), [c.name for c in steps.c]),
        # The version check fails the statement, so the COMMIT sent behind it in the same
        # pipeline never applies a transition whose saga moved (see write).
        "saga": f"WITH updated AS ({_sql(UPDATE_SAGA, SAGA_UPDATE_KEYS)} RETURNING 1) "
        "SELECT 1 / count(*) FROM updated",
        "step": _sql(UPDATE_STEP, STEP_UPDATE_KEYS),
        "history": _sql(history.insert().inline(), HISTORY_KEYS),
        "event": _sql(events.insert().returning(events.c.id), EVENT_KEYS),
    }


def _json_columns(table: sa.Table) -> frozenset[str]:
    return frozenset(c.name for c in table.c if isinstance(c.type, sa.JSON))


SAGA_JSON = _json_columns(sagas)
STEP_JSON = _json_columns(steps)
HISTORY_JSON = _json_columns(history)
EVENT_JSON = _json_columns(events)


def _params(row: dict[str, Any], json_columns: frozenset[str]) -> dict[str, Any]:
    from psycopg.types.json import Jsonb

    # SQLAlchemy's JSON type stores None as JSON null, not SQL NULL: so does this path.
    return {k: Jsonb(v) if k in json_columns else v for k, v in row.items()}


def _driver_errors(conn: Connection, statement: str, action: Callable[[], T]) -> T:
    """Run `action`, raising driver errors as SQLAlchemy's (what the store's callers handle),
    and dropping the connection from the pool if the error means it is gone."""
    import psycopg

    try:
        return action()
    except psycopg.Error as exc:
        if _connection_lost(conn, exc):
            # As SQLAlchemy does on a disconnect: this connection and every pooled one (a
            # restarted server dropped them all) are replaced on their next checkout. Closed
            # here, it is not rolled back on its way back to the pool (which would fail).
            conn.invalidate(exc)
            conn.engine.dispose(close=False)
        raise sa.exc.DBAPIError.instance(
            statement, None, exc, psycopg.Error, connection_invalidated=conn.invalidated
        ) from exc


def _connection_lost(conn: Connection, exc: Exception) -> bool:
    from psycopg import pq

    raw = conn.connection.driver_connection
    if raw is None or raw.closed or raw.broken:
        return True
    # A server that went away mid-pipeline can leave libpq in pipeline mode ("cannot exit
    # pipeline mode while busy"): nothing else can be sent on that connection.
    if raw.pgconn.pipeline_status != pq.PipelineStatus.OFF:
        return True
    # Connection exceptions, and the server shutting down or terminating this backend.
    if (getattr(exc, "sqlstate", None) or "").startswith(("08", "57P")):
        return True
    return bool(conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None))  # type: ignore[arg-type]


def _pipelined(raw: Any, body: Callable[[], T]) -> T:
    """Run `body` in pipeline mode, raising what it raised once the pipeline is left.

    Raised inside the block, an error makes psycopg log a warning ("error ignored terminating
    <psycopg.Pipeline ...>") whenever leaving the pipeline fails too: after every version check
    that refuses a write, and whenever the server went away. The first error says why.
    """
    import psycopg

    failure: psycopg.Error | None = None
    result: T | None = None
    try:
        with raw.pipeline():
            try:
                result = body()
            except psycopg.Error as exc:
                failure = exc
    except psycopg.Error:
        if failure is None:
            raise
    if failure is not None:
        raise failure
    return cast(T, result)


def load_locked(conn: Connection, saga_id: str) -> list[dict[str, Any]] | None:
    """The saga's row lock, then the saga joined with its steps, in one round trip. The load
    is a statement of its own, after the lock (see SqlSagaStore._saga_rows). None if no saga."""
    lock_sql, load_sql = _read_statements()
    raw = conn.connection.driver_connection
    assert raw is not None

    def run() -> list[dict[str, Any]] | None:
        lock = raw.cursor()
        lock.execute(lock_sql, {"saga_id": saga_id})
        load = raw.cursor()
        load.execute(load_sql, {"saga_id": saga_id})
        if lock.fetchone() is None:
            return None
        # The labels are known: reading cursor.description builds 40 column objects.
        return [dict(zip(LOAD_LABELS, row, strict=True)) for row in load.fetchall()]

    return _driver_errors(conn, load_sql, lambda: _pipelined(raw, run))


def insert(
    conn: Connection,
    saga: dict[str, Any],
    step_rows: Sequence[dict[str, Any]],
    history_rows: Sequence[dict[str, Any]],
) -> None:
    """A new saga, its steps and history, sent together with the COMMIT (IntegrityError if
    the id is taken)."""
    sql = _write_statements()
    raw = conn.connection.driver_connection
    assert raw is not None

    def run() -> None:
        cursor = raw.cursor()
        cursor.execute(sql["new_saga"], _params(saga, SAGA_JSON))
        for row in step_rows:
            cursor.execute(sql["new_step"], _params(row, STEP_JSON))
        for row in history_rows:
            cursor.execute(sql["history"], _params(row, HISTORY_JSON))
        raw.commit()

    _driver_errors(conn, sql["new_saga"], lambda: _pipelined(raw, run))


def write(conn: Connection, rows: TransitionRows) -> list[int]:
    """A transition's writes (and the steps of a saga being started), sent together with the
    COMMIT: one round trip. The ids of the event rows. Raises ConcurrencyConflict, and nothing
    commits, if the saga's version moved."""
    sql = _write_statements()
    raw = conn.connection.driver_connection
    assert raw is not None

    def send() -> list[Any]:
        raw.cursor().execute(sql["saga"], _params(rows.saga, SAGA_JSON))
        cursor = raw.cursor()
        for row in rows.new_steps:
            cursor.execute(sql["new_step"], _params(row, STEP_JSON))
        for row in rows.steps:
            cursor.execute(sql["step"], _params(row, STEP_JSON))
        for row in rows.history:
            cursor.execute(sql["history"], _params(row, HISTORY_JSON))
        event_cursors = []
        for row in rows.events:
            event_cursor = raw.cursor()
            event_cursor.execute(sql["event"], _params(row, EVENT_JSON))
            event_cursors.append(event_cursor)
        raw.commit()
        return event_cursors

    def run() -> list[int]:
        event_cursors = _pipelined(raw, send)
        ids = []
        for event_cursor in event_cursors:
            fetched = event_cursor.fetchone()
            if fetched is not None:
                ids.append(int(fetched[0]))
        return ids

    import psycopg

    try:
        return _driver_errors(conn, sql["saga"], run)
    except sa.exc.DataError as exc:
        if not isinstance(exc.orig, psycopg.errors.DivisionByZero):
            raise
        raise rows.conflict() from None


def mark_published(conn: Connection, event_ids: Sequence[int], at: datetime) -> None:
    """The outbox rows' publication, sent with its COMMIT."""
    raw = conn.connection.driver_connection
    assert raw is not None
    sql = "UPDATE sagaflow_events SET published_at = %(at)s WHERE id = ANY(%(ids)s)"

    def run() -> None:
        raw.cursor().execute(sql, {"at": at, "ids": list(event_ids)})
        raw.commit()

    _driver_errors(conn, sql, lambda: _pipelined(raw, run))


def note_ignored(conn: Connection, params: dict[str, Any]) -> int:
    """Count an ignored outcome and note it in the history within the bound, sent together
    with the COMMIT (see IgnoredStatements). The saga's count, this one included."""
    per_saga, per_step, noted = _pipelined_ignored_statements()
    raw = conn.connection.driver_connection
    assert raw is not None
    values = _params(params, frozenset(["detail"]))

    def run() -> int:
        counted = raw.cursor()
        counted.execute(per_saga, values)
        raw.cursor().execute(per_step, values)
        raw.cursor().execute(noted, values)
        raw.commit()
        row = counted.fetchone()
        assert row is not None
        return int(row[0])

    return _driver_errors(conn, per_saga, lambda: _pipelined(raw, run))


@cache
def _ignored() -> IgnoredStatements:
    return ignored_statements(postgresql.insert)


@cache
def _pipelined_ignored_statements() -> tuple[str, str, str]:
    statements = _ignored()
    counting = statements.per_saga.returning(ignored.c.count)
    return _sql(counting), _sql(statements.per_step), _sql(statements.noted)
