"""SQLite engines that wait for each other: WAL mode and a lock timeout.

A leaf module (SQLAlchemy and the stdlib only): the saga store's SQLite engine builds on it, and
so do a service's own database (workers/db.py) and the producer's start outbox, neither of which
may load the saga store.
"""

from __future__ import annotations

import sqlite3
import time

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine

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
