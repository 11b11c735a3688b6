"""What a saga store does, as a protocol, and the values it hands back.

The engine, the client and the operator's tools depend on this module only; sagaflow.store.factory
opens the SQL implementation (SQLite or PostgreSQL) that a database URL names. Nothing here
imports SQLAlchemy at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from sagaflow.core.definitions import SagaState
from sagaflow.core.machine import HistoryEntry, Ignored, PublishEvent, SagaRecord, Transition
from sagaflow.core.search import FieldMatch

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

# Ignored outcomes (duplicate, late or forged) a saga's history keeps in full; past them, each
# one only adds to the saga's counters, so a flood of them costs an upsert each and no row.
IGNORED_IN_HISTORY = 20


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Decision:
    """What `SagaStore.transition` did: the saga as loaded, the outcome, recorded event ids."""

    saga: SagaRecord | None
    outcome: Transition | Ignored | None
    event_ids: list[int]


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


# How a transition is computed from the saga as stored (sagaflow.core.machine.apply, mostly).
Decide = Callable[[SagaRecord], Transition | Ignored]


class SagaStore(Protocol):
    """Every read and write of saga state. Driver errors that mean "the database is not
    reachable" (or has no sagaflow tables) are raised as StoreUnavailable, so callers can
    retry them at the boundary."""

    @property
    def url(self) -> str: ...

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (made on first use, and again in a forked child)."""
        ...

    def connect(self) -> AbstractContextManager[Connection]:
        """A connection for read-only queries kept elsewhere (stats, the quarantine), with
        driver errors mapped as everywhere in the store."""
        ...

    def snapshot(self) -> AbstractContextManager[Connection]:
        """A read-only transaction whose queries all see one state of the database."""
        ...

    def ping(self) -> None: ...

    def dispose(self) -> None: ...

    # -- schema --------------------------------------------------------------------------------

    def ensure_database(self) -> None:
        """Make what the database needs before its first migration where the store can (a
        SQLite file's folder); a server's database is its operator's to make."""
        ...

    def upgrade(self, revision: str = "head") -> None:
        """Apply sagaflow's Alembic migrations up to `revision`."""
        ...

    # -- writes --------------------------------------------------------------------------------

    def create(self, saga: SagaRecord, history_entries: Sequence[HistoryEntry] = ()) -> bool:
        """Insert a new saga and its steps. False if a saga with this id already exists."""
        ...

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
        ...

    def transition(self, saga_id: str, decide: Decide) -> Decision:
        """Load a saga, let `decide` compute its transition, and store it, in one transaction.

        The saga row is locked for the transaction, so concurrent deciders queue up instead of
        conflicting; the version check stays as a guard. `decide` must be pure: it may run
        again. A store may decide on the saga as it last wrote it, without loading it: the
        version check then proves nobody changed it since (if somebody did, or if that state
        ignores the event, the saga is loaded and decided on again).
        """
        ...

    def promote(self, saga_id: str, plan: Callable[[SagaRecord], Transition]) -> Decision:
        """Start a saga recorded as `requested`: `plan` turns the stored request into its
        first transition (steps and all, or a rejection), stored in one transaction under the
        same row lock as `transition`, so of concurrent starters exactly one promotes it.

        The Decision's saga is None if no such saga is recorded; its outcome is Ignored if the
        saga is already past `requested` (a duplicate start).
        """
        ...

    def record_ignored(self, saga_id: str, step: str | None, detail: dict[str, Any]) -> int:
        """Count an outcome that changed nothing (duplicate, late or forged), by saga and by
        step and kind (detail's "outcome"), and note it in the history while the saga has at
        most IGNORED_IN_HISTORY of them. The saga's count, this one included."""
        ...

    def mark_published(self, event_ids: Sequence[int]) -> None: ...

    def forget(self) -> None:
        """Drop every saga the store remembers (the next transition of each loads it)."""
        ...

    # -- reads ---------------------------------------------------------------------------------

    def load(self, saga_id: str) -> SagaRecord | None: ...

    def get(self, saga_id: str) -> SagaRecord:
        """The saga; SagaNotFound if there is none."""
        ...

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
        """Sagas newest first, without their steps (load one to see them). `since` keeps those
        created at or after it; `id_prefix` those whose id starts with it; `where` those whose
        input holds every field match (an index serves them on PostgreSQL)."""
        ...

    def stalled(self, before: datetime, limit: int = 500) -> list[str]:
        """Ids of running sagas whose last change is older than `before`, oldest first."""
        ...

    def requested(self, before: datetime, limit: int = 500) -> list[str]:
        """Ids of sagas recorded as `requested` before `before` and still not started (their
        start message was lost or is late), oldest first."""
        ...

    def timed_out(self, now: datetime, limit: int = 500) -> list[tuple[str, int]]:
        """(saga id, position) of steps whose timer is due: executing actions past their
        deadline, retriable steps due to be sent again, verify tasks that did not answer."""
        ...

    def overdue(self, now: datetime, limit: int = 500) -> list[str]:
        """Ids of sagas running forward past their deadline and not being stopped yet."""
        ...

    def unpublished_events(self, before: datetime, limit: int = 500) -> list[EventRow]:
        """Recorded outcome events never marked published, created before `before`."""
        ...

    def count_by_state(self, saga_ids: Sequence[str] | None = None) -> dict[str, int]: ...

    def versions(self, saga_ids: Sequence[str]) -> dict[str, tuple[SagaState, int]]:
        """State and version of each of these sagas the store has, in one query (what a
        waiter needs to know whether to load the saga)."""
        ...

    def history(self, saga_id: str) -> list[HistoryRow]: ...

    def ignored(self, saga_id: str) -> IgnoredOutcomes:
        """How many outcomes were ignored for the saga (see record_ignored)."""
        ...

    def events(self, saga_id: str) -> list[EventRow]: ...
