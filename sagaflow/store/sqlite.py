"""The saga store on SQLite: one file, WAL mode, writers serialised by BEGIN IMMEDIATE.

SQLite has one writer at a time: a write transaction takes the database's write lock at BEGIN
(and waits up to SQLITE_LOCK_TIMEOUT for it), which also serves as every saga's row lock.
Readers run beside it in WAL mode.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Engine

from sagaflow.core.search import FieldMatch, Scalar
from sagaflow.errors import StoreUnavailable
from sagaflow.sqlite_engine import SQLITE_LOCK_TIMEOUT, create_sqlite_engine
from sagaflow.store.rows import IgnoredStatements, ignored_statements
from sagaflow.store.schema import sagas
from sagaflow.store.sql import WRITE_OPTION, SqlSagaStore
from sagaflow.urls import mask_url


class SqliteSagaStore(SqlSagaStore):
    """Saga state in a SQLite file."""

    def _database_folder(self) -> str | None:
        """The folder of the database file (None in memory or for a `file:` URI)."""
        database = sa.engine.make_url(self.url).database or ""
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        return os.path.dirname(os.path.abspath(database))

    def ensure_database(self) -> None:
        folder = self._database_folder()
        if folder:
            os.makedirs(folder, exist_ok=True)

    def _create_engine(self) -> Engine:
        folder = self._database_folder()
        if folder and not os.path.isdir(folder):
            raise StoreUnavailable(
                f"saga store {mask_url(self.url)} unavailable: directory {folder} does not exist"
            )
        engine = create_sqlite_engine(self.url, echo=self._echo)
        sa_event.listen(engine, "connect", _pragmas)
        sa_event.listen(engine, "begin", _begin)
        return engine

    def _lock_saga(self, conn: Connection, saga_id: str) -> bool:
        return True  # BEGIN IMMEDIATE already holds the database's write lock

    def _ignored_statements(self) -> IgnoredStatements:
        return _ignored()

    def _input_matches(self, match: FieldMatch) -> sa.ColumnElement[bool]:
        path = _json_path(match.path)
        return sa.or_(*(_holds(path, value) for value in match.values))

    def _missing_tables(self, exc: sa.exc.DBAPIError) -> bool:
        return "no such table" in str(exc.orig)

    @contextmanager
    def migration_connection(self) -> Iterator[Connection]:
        # A plain engine: foreign keys off, as SQLite's batch table rebuilds need (with them on,
        # dropping the old sagas table would cascade to every step row). It is in WAL mode
        # before the first table exists: in rollback-journal mode, the migration's write lock
        # would make every other connection's switch to WAL fail (see use_wal).
        self.engine  # noqa: B018 - raises StoreUnavailable for a missing folder
        engine = create_sqlite_engine(self.url)
        try:
            with engine.begin() as conn:
                yield conn
        finally:
            engine.dispose()


def _pragmas(dbapi_conn: Any, _record: Any) -> None:
    # sqlite3's own implicit BEGIN is deferred: a reader that later writes can fail at once
    # with SQLITE_BUSY. The store emits BEGIN itself (see _begin).
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_LOCK_TIMEOUT * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _begin(conn: Connection) -> None:
    # Write transactions take the write lock up front and wait (busy_timeout) for it.
    immediate = conn.get_execution_options().get(WRITE_OPTION)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@cache
def _ignored() -> IgnoredStatements:
    return ignored_statements(sqlite.insert)


def _json_path(path: tuple[str, ...]) -> str:
    """A SQLite JSON path to a key as the input is stored: SQLite compares a path's keys with
    the stored text as it is, and the store writes keys JSON-escaped (\\u00e9 for é), so the
    path carries them escaped the same way. (FieldMatch refuses keys with double quotes, which
    SQLite's paths cannot hold.)"""
    return "$" + "".join(f'."{json.dumps(key)[1:-1]}"' for key in path)


INT64 = range(-(2**63), 2**63)


def _holds(path: str, value: Scalar) -> sa.ColumnElement[bool]:
    """json_extract alone cannot tell 1 from true or "1" from 1: compare the JSON type too."""
    kind = sa.func.json_type(sagas.c.data, path)
    if value is None:
        return kind == "null"
    if isinstance(value, bool):
        return kind == ("true" if value else "false")
    extracted = sa.func.json_extract(sagas.c.data, path)
    if isinstance(value, str):
        return sa.and_(kind == "text", extracted == value)
    if isinstance(value, int) and value not in INT64:
        value = float(value)  # SQLite's integers are 64-bit; it reads a larger one as real
    return sa.and_(kind.in_(("integer", "real")), extracted == value)
