"""PostgreSQL's hot path: a transition in two round trips (lock and load; write and commit).

Through SQLAlchemy, each statement waits for its reply before the next is sent: a transition
cost eight round trips (BEGIN, lock, load, saga, steps, history, events, COMMIT), and on a
2-core machine each one is a context switch to the server and back. psycopg's pipeline mode
sends several statements before reading any reply. SQLAlchemy reads every result as it
executes, so these statements run on the driver connection, inside the transaction SQLAlchemy
opened; they are compiled once from the same tables. The writes carry their own COMMIT (the
transaction SQLAlchemy then ends is already committed), or roll back with it on any error.

Used by sagaflow.store.rows when the engine's driver is psycopg.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sagaflow.errors import ConcurrencyConflict
from sagaflow.store.schema import events, history, ignored, sagas, steps

T = TypeVar("T")

LOAD_NAMES = [f"saga_{c.name}" for c in sagas.c] + [f"step_{c.name}" for c in steps.c]
HISTORY_KEYS = ["saga_id", "at", "event", "from_state", "to_state", "step", "detail"]
EVENT_KEYS = ["saga_id", "name", "payload", "created_at", "published_at"]


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
    from sagaflow.store.rows import LOAD_SAGA, LOCK_SAGA

    return _sql(LOCK_SAGA), _sql(LOAD_SAGA)


@cache
def _write_statements() -> dict[str, str]:
    from sagaflow.store.rows import FIXED_SAGA_COLUMNS, UPDATE_SAGA, UPDATE_STEP

    # The parameters store_rows.write_transition gives the saga and step updates.
    saga_keys = [c.name for c in sagas.c if c.name not in FIXED_SAGA_COLUMNS]
    saga_keys += ["key_id", "key_version"]
    step_keys = [c.name for c in steps.c if c.name not in ("saga_id", "position")]
    step_keys += ["key_saga_id", "key_position"]
    return {
        "new_saga": _sql(sagas.insert(), [c.name for c in sagas.c]),
        "new_step": _sql(steps.insert(), [c.name for c in steps.c]),
        # The version check fails the statement, so the COMMIT sent behind it in the same
        # pipeline never applies a transition whose saga moved (see write).
        "saga": f"WITH updated AS ({_sql(UPDATE_SAGA, saga_keys)} RETURNING 1) "
        "SELECT 1 / count(*) FROM updated",
        "step": _sql(UPDATE_STEP, step_keys),
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
    is a statement of its own, after the lock (see store_rows.load_saga). None if no saga."""
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
        return [dict(zip(LOAD_NAMES, row, strict=True)) for row in load.fetchall()]

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


def write(
    conn: Connection,
    saga_update: dict[str, Any],
    step_updates: Sequence[dict[str, Any]],
    history_rows: Sequence[dict[str, Any]],
    event_rows: Sequence[dict[str, Any]],
    new_steps: Sequence[dict[str, Any]] = (),
) -> list[int]:
    """A transition's writes (and the steps of a saga being started), sent together with the
    COMMIT: one round trip. The ids of the event rows. Raises ConcurrencyConflict, and nothing
    commits, if the saga's version moved."""
    sql = _write_statements()
    raw = conn.connection.driver_connection
    assert raw is not None

    def send() -> list[Any]:
        raw.cursor().execute(sql["saga"], _params(saga_update, SAGA_JSON))
        cursor = raw.cursor()
        for row in new_steps:
            cursor.execute(sql["new_step"], _params(row, STEP_JSON))
        for row in step_updates:
            cursor.execute(sql["step"], _params(row, STEP_JSON))
        for row in history_rows:
            cursor.execute(sql["history"], _params(row, HISTORY_JSON))
        event_cursors = []
        for row in event_rows:
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
        raise ConcurrencyConflict(
            f"saga {saga_update['key_id']} changed since version {saga_update['key_version']}"
        ) from None


def mark_published(conn: Connection, event_ids: Sequence[int], at: Any) -> None:
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
    with the COMMIT (store_rows.ignored_statements). The saga's count, this one included."""
    per_saga, per_step, noted = _ignored_statements()
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
def _ignored_statements() -> tuple[str, str, str]:
    from sagaflow.store.rows import ignored_statements

    per_saga, per_step, noted = ignored_statements("postgresql")
    return _sql(per_saga.returning(ignored.c.count)), _sql(per_step), _sql(noted)
