"""The producer's start outbox: starts the saga store did not take, kept in a local SQLite file
until it does.

`SagaClient.start` records a start in the store before it returns the saga's id. When the store
does not answer, the start is written here instead (committed with a full sync) and the broker
carries its message as usual; a drain records it in the store as `requested` once the store
answers again, and the recovery sweep starts it if its message was lost meanwhile. The store
refuses a saga id it already has, so a start drained twice (two processes draining one file, a
drain and the orchestrator's own record of the message) is one saga.

One file may serve every producer process of a host and several stores: each row names the store
it is meant for. WAL mode and a lock wait let processes and threads write it at once.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sagaflow.core.definitions import SagaState
from sagaflow.core.records import HistoryEntry, SagaRecord
from sagaflow.core.vocabulary import HistoryEvent
from sagaflow.errors import OutboxUnavailable, StoreUnavailable
from sagaflow.sqlite_engine import SQLITE_LOCK_TIMEOUT, use_wal
from sagaflow.store.factory import store_key
from sagaflow.store.protocol import SagaStore

logger = logging.getLogger(__name__)

# PRAGMA user_version of the file; a file of another version is refused, never rewritten.
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending_starts (
    store TEXT NOT NULL,
    saga_id TEXT NOT NULL,
    saga_type TEXT NOT NULL,
    data TEXT NOT NULL,
    deadline REAL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (store, saga_id)
)
"""
DRAIN_BATCH = 200


@dataclass(frozen=True)
class StartRequest:
    """A start as the producer asked for it: what the store records as `requested`."""

    saga_id: str
    saga_type: str
    data: dict[str, Any]
    deadline: float | None  # seconds from created_at
    created_at: datetime

    def as_saga(self, via: str | None = None) -> tuple[SagaRecord, list[HistoryEntry]]:
        """The `requested` saga and its history row; `via` notes how it reached the store."""
        saga = SagaRecord(
            saga_id=self.saga_id,
            saga_type=self.saga_type,
            state=SagaState.REQUESTED,
            data=self.data,
            steps=(),
            created_at=self.created_at,
            # The sweep starts a request left this long: an outage counts, since its start
            # message was as likely lost as any.
            updated_at=self.created_at,
            deadline_at=(
                self.created_at + timedelta(seconds=self.deadline)
                if self.deadline is not None
                else None
            ),
        )
        detail: dict[str, Any] | None = {"via": via} if via else None
        return saga, [HistoryEntry(HistoryEvent.SAGA_REQUESTED, None, saga.state, None, detail)]


class StartOutbox:
    """One store's rows in an outbox file. Each call opens its own connection, so an instance
    is safe in threads and across fork."""

    def __init__(self, path: Path, store_url: str) -> None:
        self.path = Path(path)
        self.store = store_key(store_url)  # which store a row is meant for

    def __repr__(self) -> str:
        return f"StartOutbox({str(self.path)!r}, {self.store!r})"

    def put(self, request: StartRequest) -> bool:
        """Keep the start, durably, before returning. False if it was already kept (the first
        one stays). Raises OutboxUnavailable if the file cannot be written."""
        row = (
            self.store,
            request.saga_id,
            request.saga_type,
            json.dumps(request.data, separators=(",", ":"), ensure_ascii=False),
            request.deadline,
            request.created_at.isoformat(),
        )
        with self._connection(create=True) as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO pending_starts VALUES (?, ?, ?, ?, ?, ?)", row
            )
            return cursor.rowcount == 1

    def pending(self, limit: int = DRAIN_BATCH, after: int = 0) -> list[tuple[int, StartRequest]]:
        """Up to `limit` kept starts after position `after`, oldest first, with their
        positions."""
        if not self.path.exists():
            return []
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT rowid, saga_id, saga_type, data, deadline, created_at FROM pending_starts "
                "WHERE store = ? AND rowid > ? ORDER BY rowid LIMIT ?",
                (self.store, after, limit),
            ).fetchall()
        return [
            (
                position,
                StartRequest(
                    saga_id, saga_type, json.loads(data), deadline, datetime.fromisoformat(created)
                ),
            )
            for position, saga_id, saga_type, data, deadline, created in rows
        ]

    def count(self) -> int:
        if not self.path.exists():
            return 0
        with self._connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pending_starts WHERE store = ?", (self.store,)
            ).fetchone()
        return int(row[0])

    def remove(self, saga_ids: Sequence[str]) -> None:
        with self._connection() as conn:
            conn.executemany(
                "DELETE FROM pending_starts WHERE store = ? AND saga_id = ?",
                [(self.store, saga_id) for saga_id in saga_ids],
            )

    @contextmanager
    def _connection(self, create: bool = False) -> Iterator[sqlite3.Connection]:
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=SQLITE_LOCK_TIMEOUT, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxUnavailable(f"start outbox {self.path} cannot be opened: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout={int(SQLITE_LOCK_TIMEOUT * 1000)}")
            use_wal(conn)
            # Every commit reaches the disk before start() hands out the id.
            conn.execute("PRAGMA synchronous=FULL")
            self._check_schema(conn)
            yield conn
        except sqlite3.Error as exc:
            raise OutboxUnavailable(f"start outbox {self.path} cannot be used: {exc}") from exc
        finally:
            conn.close()

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                    conn.execute(_SCHEMA)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise OutboxUnavailable(
                f"start outbox {self.path} has schema version {version}; this sagaflow reads "
                f"version {SCHEMA_VERSION} (drain it with the sagaflow that wrote it)"
            )


@dataclass
class DrainReport:
    recorded: int = 0  # new in the store
    already_there: int = 0  # the store had the saga (another drain, or its start message)
    refused: int = 0  # the store raised something other than an outage: kept, tried again later


def drain(outbox: StartOutbox, store: SagaStore, batch: int = DRAIN_BATCH) -> DrainReport:
    """Record every kept start in the store as `requested` and remove it from the outbox.

    Raises StoreUnavailable when the store stops answering (what was recorded so far is
    removed). Safe from several processes at once: the store refuses a duplicate saga id."""
    report = DrainReport()
    after = 0
    while True:
        found = outbox.pending(batch, after)
        if not found:
            return report
        handled: list[str] = []
        try:
            for position, request in found:
                after = position
                try:
                    recorded = store.create(*request.as_saga(via="outbox"))
                except StoreUnavailable:
                    raise
                except Exception:
                    logger.exception("start outbox: the store refused saga %s", request.saga_id)
                    report.refused += 1
                    continue
                handled.append(request.saga_id)
                if recorded:
                    report.recorded += 1
                else:
                    report.already_there += 1
        finally:
            # Removed once the store has them; a drain that dies before this leaves them to
            # the next one, which finds them recorded.
            if handled:
                outbox.remove(handled)


class OutboxDrainer:
    """Drains one store's starts from the outbox in a background thread: at once when woken
    by a call that reached the store, else with a backoff capped at `max_delay` while the
    store does not answer. The thread ends when nothing is left."""

    first_delay = 0.2  # seconds after the first failed try, doubling
    max_delay = 5.0
    exit_wait = 5.0  # how long finish() lets a drain whose store answers go on

    def __init__(self, outbox: StartOutbox, store: SagaStore) -> None:
        self.outbox = outbox
        self.store = store
        self._init_process_state()
        _DRAINERS.add(self)

    def _init_process_state(self) -> None:
        # Locks and threads do not survive fork: a child starts over.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._more = False  # a start kept since the current pass began
        self._backing_off = False
        self._stopping = False
        self._last_attempt = 0.0

    def wake(self, store_answered: bool = False, added: bool = False) -> None:
        """Drain soon: at once if the store just answered the caller, else no sooner than a
        second after the last try (a caller that has not reached the store proves nothing).
        `added`: the caller has just kept a start, which a pass under way may have missed."""
        if self._pid != os.getpid():
            self._init_process_state()
        with self._lock:
            if self._stopping:
                return
            self._more = self._more or added
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sagaflow-outbox-drain", daemon=True
                )
                self._thread.start()
                return
        if store_answered or time.monotonic() - self._last_attempt >= 1.0:
            self._wake.set()

    @property
    def running(self) -> bool:
        thread = self._thread
        return self._pid == os.getpid() and thread is not None and thread.is_alive()

    def stop(self, timeout: float = 0.0) -> None:
        """Let the current try finish (waiting up to `timeout` for it) and drain no more."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake.set()
        if thread is not None and timeout > 0 and self._pid == os.getpid():
            thread.join(timeout)

    def finish(self) -> None:
        """Drain no more, but let a drain whose store answers end first, up to `exit_wait`
        (a short-lived producer, a CLI call, would otherwise leave it to the next one). One
        that backs off has nothing to wait for."""
        if not self.running:
            return
        self.stop(0.0 if self._backing_off else self.exit_wait)

    def _run(self) -> None:
        try:
            self._drain_until_empty()
        except Exception:  # a bug must not leave a dead thread that wake() takes for alive
            logger.exception("start outbox: the drain stopped")
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _drain_until_empty(self) -> None:
        delay = self.first_delay
        while True:
            with self._lock:
                self._more = False
                self._wake.clear()
            self._last_attempt = time.monotonic()
            try:
                report = drain(self.outbox, self.store)
            except StoreUnavailable as exc:  # OutboxUnavailable too: the file may come back
                # Once per outage at INFO: a long one would fill the log otherwise.
                level = logging.INFO if delay == self.first_delay else logging.DEBUG
                logger.log(level, "start outbox: not drained (%s); next try in %.1fs", exc, delay)
                done = False
            else:
                if report.recorded or report.already_there:
                    logger.info(
                        "start outbox %s: %d starts recorded in the store, %d were there already",
                        self.outbox.path,
                        report.recorded,
                        report.already_there,
                    )
                done = report.refused == 0
            with self._lock:
                if self._stopping or (done and not self._more):
                    self._thread = None
                    return
                if done:
                    delay = self.first_delay
                    continue
                self._backing_off = True
            self._wake.wait(delay)
            with self._lock:
                self._backing_off = False
                if self._stopping:
                    self._thread = None
                    return
            delay = min(delay * 2, self.max_delay)


_DRAINERS: weakref.WeakSet[OutboxDrainer] = weakref.WeakSet()


@atexit.register
def _finish_drains() -> None:
    for drainer in list(_DRAINERS):
        drainer.finish()
