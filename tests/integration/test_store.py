"""The saga store contract, run against SQLite and PostgreSQL alike.

PostgreSQL is required: each run of this module creates a fresh, uniquely named database on the
server named by SAGAFLOW_TEST_POSTGRES_URL (default: a local `postgres` superuser without a
password) and drops it afterwards. If that server cannot be reached the PostgreSQL tests fail.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from sagaflow.core.definitions import Phase, SagaState, Step, StepStatus
from sagaflow.core.machine import (
    ErrorInfo,
    HistoryEntry,
    Ignored,
    PublishEvent,
    SagaRecord,
    StepFailed,
    StepSucceeded,
    Transition,
    apply,
    begin,
    new_saga,
)
from sagaflow.core.vocabulary import HistoryEvent
from sagaflow.errors import ConcurrencyConflict, SagaNotFound, StoreUnavailable
from sagaflow.store.factory import open_store
from sagaflow.store.migrate import VERSION_TABLE, current_revision, head_revision
from sagaflow.store.protocol import IGNORED_IN_HISTORY, IgnoredCount, SagaStore
from sagaflow.store.schema import metadata
from sagaflow.store.sql import SqlSagaStore
from tests.conftest import drop_pooled_connection, poll

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

NOW = datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=timezone.utc)
LATER = NOW + timedelta(seconds=7, microseconds=250)
DATA = {
    "order_id": "o-1",
    "customer": "Zoë Ñandú",
    "quantity": 2,
    "amount": 19.99,
    "tags": ["gift", "express"],
    "address": {"city": "Zürich", "lines": ["Bahnhofstrasse 1", None]},
    "paid": False,
}
STEPS = [
    Step("reserve_stock", "inventory.reserve", "inventory.release", queue="inventory"),
    Step("charge_payment", "payments.charge", "payments.refund", queue="payments"),
    Step(
        "schedule_shipping",
        "shipping.schedule",
        "shipping.cancel",
        queue="shipping",
        compensation_queue="shipping-undo",
        compensate_on_failure=True,
    ),
]
DECLINED = ErrorInfo("CardDeclined", "insufficient funds", "Traceback (most recent...)")
SAGA_TABLES = {
    "sagaflow_sagas",
    "sagaflow_steps",
    "sagaflow_history",
    "sagaflow_events",
    "sagaflow_quarantine",
    "sagaflow_ignored",
    "sagaflow_ignored_by_step",
}


# -- backends -------------------------------------------------------------------------------------


def postgres_url() -> sa.URL:
    return sa.make_url(os.environ.get("SAGAFLOW_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database; its URL is yielded and it is dropped afterwards."""
    server = postgres_url()
    name = f"sagaflow_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        except sa.exc.OperationalError as exc:
            pytest.fail(
                f"PostgreSQL at {server.render_as_string(hide_password=True)} is unreachable "
                f"({exc.orig}). The store tests need it: start PostgreSQL or point "
                "SAGAFLOW_TEST_POSTGRES_URL at a server where this user may CREATE DATABASE.",
                pytrace=False,
            )
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@dataclass
class Backend:
    name: str
    url: str
    store: SagaStore
    scratch: Path


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """A migrated saga store on each database; one database per module and backend."""
    scratch = tmp_path_factory.mktemp(f"store-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{scratch / 'sagaflow.db'}"
        store = open_store(url)
        store.upgrade()
        yield Backend("sqlite", url, store, scratch)
        store.dispose()
        return
    with postgres_database() as url:
        store = open_store(url)
        try:
            store.upgrade()
            yield Backend("postgresql", url, store, scratch)
        finally:
            store.dispose()


@pytest.fixture
def store(backend: Backend) -> SagaStore:
    return backend.store


@pytest.fixture
def blank_store(backend: Backend) -> Iterator[SagaStore]:
    """A store on an empty database of the same kind: no `upgrade()` was run on it."""
    if backend.name == "sqlite":
        blank = open_store(f"sqlite:///{backend.scratch / f'blank-{uuid.uuid4().hex}.db'}")
        yield blank
        blank.dispose()
        return
    with postgres_database() as url:
        blank = open_store(url)
        try:
            yield blank
        finally:
            blank.dispose()


# -- helpers --------------------------------------------------------------------------------------


def new_id(prefix: str = "saga") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def started(saga_id: str, saga_type: str = "order", now: datetime = NOW) -> Transition:
    return begin(new_saga(saga_id, saga_type, DATA, STEPS, now), now)


def create_running(store: SagaStore, saga_type: str = "order", now: datetime = NOW) -> str:
    saga_id = new_id()
    t = started(saga_id, saga_type, now)
    recorded = HistoryEntry(HistoryEvent.SAGA_RECORDED, None, SagaState.STARTED)
    assert store.create(t.saga, [recorded, *t.history])
    return saga_id


def step_outcome(saga: SagaRecord, event: StepSucceeded | StepFailed) -> Transition:
    outcome = apply(saga, event, LATER)
    assert not isinstance(outcome, Ignored), outcome
    return outcome


def succeed(saga: SagaRecord, position: int, result: Any) -> Transition:
    step = saga.steps[position]
    return step_outcome(
        saga, StepSucceeded(position, Phase.ACTION, step.attempts, result, step.task_id)
    )


def fail(saga: SagaRecord, position: int) -> Transition:
    step = saga.steps[position]
    error = replace(DECLINED, task_id=step.task_id)
    return step_outcome(saga, StepFailed(position, Phase.ACTION, step.attempts, error))


def commit(store: SagaStore, before: SagaRecord, t: Transition) -> list[int]:
    publishes = [c for c in t.commands if isinstance(c, PublishEvent)]
    return store.commit(before, t.saga, t.changed_steps, t.history, publishes)


def datetimes(saga: SagaRecord) -> list[datetime]:
    values = [saga.created_at, saga.updated_at, saga.finished_at]
    for step in saga.steps:
        values += [getattr(step, f.name) for f in fields(step) if f.name.endswith("_at")]
    return [v for v in values if v is not None]


# -- ignored outcomes -----------------------------------------------------------------------------


def ignore(store: SagaStore, saga_id: str, step: str | None, outcome: str, n: int) -> list[int]:
    """Record `n` ignored outcomes of one kind; the saga's count after each."""
    return [
        store.record_ignored(saga_id, step, {"outcome": outcome, "reason": "a duplicate"})
        for _ in range(n)
    ]


def ignored_rows(store: SagaStore, saga_id: str) -> list[Any]:
    return [h for h in store.history(saga_id) if h.event == HistoryEvent.OUTCOME_IGNORED]


def test_ignored_outcomes_are_counted_and_only_the_first_ones_kept_in_the_history(
    store: SagaStore,
) -> None:
    saga_id = create_running(store)
    other = create_running(store)
    counts = ignore(store, saga_id, "reserve_stock", "succeeded", 30)
    counts += ignore(store, saga_id, "charge_payment", "failed", 15)
    counts += ignore(store, saga_id, None, "failed", 5)  # a position with no step
    ignore(store, other, "reserve_stock", "succeeded", 3)
    assert counts == list(range(1, 51))

    noted = ignored_rows(store, saga_id)
    assert IGNORED_IN_HISTORY == 20
    assert len(noted) == IGNORED_IN_HISTORY
    # The first ones, in full: all 20 were of the first kind recorded.
    assert {(h.step, h.detail["outcome"] if h.detail else None) for h in noted} == {
        ("reserve_stock", "succeeded")
    }
    assert all(h.to_state == SagaState.PENDING.value and h.from_state is None for h in noted)

    ignored = store.ignored(saga_id)
    assert ignored.count == 50 and ignored.in_history == 20
    assert ignored.summary() == "50 outcomes ignored (first 20 in the history)"
    assert [(c.step, c.outcome, c.count) for c in ignored.by_step] == [
        (None, "failed", 5),
        ("charge_payment", "failed", 15),
        ("reserve_stock", "succeeded", 30),
    ]
    assert all(isinstance(c, IgnoredCount) and c.last_at.tzinfo for c in ignored.by_step)
    assert ignored.first_at is not None and ignored.last_at is not None
    assert ignored.first_at <= ignored.last_at
    assert ignored.to_json()["count"] == 50

    # Counted per saga: the other saga's three are all in its history.
    assert store.ignored(other).summary() == "3 outcomes ignored (all in the history)"
    assert len(ignored_rows(store, other)) == 3
    assert store.ignored(create_running(store)).count == 0


def test_the_history_bound_holds_for_outcomes_ignored_at_the_same_time(
    store: SagaStore,
) -> None:
    saga_id = create_running(store)
    start = threading.Barrier(6, timeout=30)
    counts: list[int] = []
    errors: list[BaseException] = []

    def flood(step: str, outcome: str) -> None:
        try:
            start.wait()
            counts.extend(ignore(store, saga_id, step, outcome, 10))
        except BaseException as exc:
            errors.append(exc)

    kinds = [(s.name, o) for s in STEPS for o in ("succeeded", "failed")]
    threads = [threading.Thread(target=flood, args=kind) for kind in kinds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(counts) == list(range(1, 61))  # each note saw the count its own made
    assert len(ignored_rows(store, saga_id)) == IGNORED_IN_HISTORY
    ignored = store.ignored(saga_id)
    assert ignored.count == 60
    assert sorted((c.step, c.outcome, c.count) for c in ignored.by_step) == sorted(
        (step, outcome, 10) for step, outcome in kinds
    )


def test_postgres_without_pipeline_mode_counts_ignored_outcomes_the_same(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend.name != "postgresql":
        pytest.skip("PostgreSQL's two write paths")
    from sagaflow.store import postgres as store_pg

    monkeypatch.setattr(store_pg, "uses_pipeline", lambda conn: False)
    saga_id = create_running(backend.store)
    assert ignore(backend.store, saga_id, "reserve_stock", "failed", 22)[-1] == 22
    assert len(ignored_rows(backend.store, saga_id)) == IGNORED_IN_HISTORY
    assert backend.store.ignored(saga_id).count == 22


def test_upgrade_counts_the_outcomes_the_history_already_holds(
    backend: Backend, tmp_path: Path
) -> None:
    from sagaflow.store.migrate import downgrade

    sqlite = backend.name == "sqlite"
    store = open_store(f"sqlite:///{tmp_path / 'backfill.db'}") if sqlite else backend.store
    try:
        if sqlite:
            store.upgrade()
        saga_id = create_running(store)
        downgrade(store, "0008")
        noted = [
            HistoryEntry(HistoryEvent.OUTCOME_IGNORED, None, SagaState.PENDING, step, detail)
            for step, detail in [
                ("reserve_stock", {"outcome": "succeeded", "reason": "late"}),
                ("reserve_stock", {"outcome": "succeeded", "reason": "late"}),
                (None, {"outcome": "failed", "reason": "no step at position 7"}),
                ("charge_payment", {"reason": "noted before outcomes had a kind"}),
            ]
        ]
        from sagaflow.store.rows import insert_history

        with store.engine.begin() as conn:
            insert_history(conn, saga_id, NOW, noted)
        store.upgrade()
        ignored = store.ignored(saga_id)
        assert ignored.count == 4 and ignored.first_at == NOW
        assert [(c.step, c.outcome, c.count) for c in ignored.by_step] == [
            (None, "failed", 1),
            ("charge_payment", "", 1),
            ("reserve_stock", "succeeded", 2),
        ]
        assert store.record_ignored(saga_id, None, {"outcome": "failed"}) == 5
    finally:
        if sqlite:
            store.dispose()


# -- create and load ------------------------------------------------------------------------------


def test_create_and_load_round_trip(store: SagaStore) -> None:
    saga_id = new_id()
    t = started(saga_id)

    assert store.create(t.saga, t.history) is True
    loaded = store.load(saga_id)

    assert loaded == t.saga
    assert loaded is not None
    assert loaded.state is SagaState.PENDING
    assert loaded.data == DATA
    assert [s.name for s in loaded.steps] == [
        "reserve_stock",
        "charge_payment",
        "schedule_shipping",
    ]
    assert loaded.steps[0].status is StepStatus.EXECUTING
    assert loaded.steps[0].task_id == f"{saga_id}.0.action.1"
    assert loaded.steps[2].compensation_queue == "shipping-undo"
    assert loaded.steps[2].compensate_on_failure is True
    assert store.get(saga_id) == loaded


def test_round_trip_keeps_results_errors_and_every_field(store: SagaStore) -> None:
    saga = started(new_id()).saga
    saga = succeed(saga, 0, {"reservation": "r-1", "lines": [1, 2.5, None, "ä"]}).saga
    saga = succeed(saga, 1, None).saga
    saga = fail(saga, 2).saga  # compensate_on_failure: the failed step is compensating
    assert saga.state is SagaState.COMPENSATING
    assert saga.steps[2].status is StepStatus.COMPENSATING
    saga = replace(saga, version=4)

    assert store.create(saga)
    loaded = store.get(saga.saga_id)

    assert loaded == saga
    assert loaded.error == replace(DECLINED, task_id=f"{saga.saga_id}.2.action.1")
    assert loaded.steps[0].result == {"reservation": "r-1", "lines": [1, 2.5, None, "ä"]}
    assert loaded.steps[1].result is None
    assert loaded.version == 4


def test_create_of_an_existing_id_returns_false_and_changes_nothing(store: SagaStore) -> None:
    saga_id = create_running(store)
    original = store.get(saga_id)
    history = store.history(saga_id)

    other = begin(new_saga(saga_id, "refund", {"x": 1}, STEPS[:1], LATER), LATER)
    assert store.create(other.saga, other.history) is False

    assert store.get(saga_id) == original
    assert store.history(saga_id) == history


def test_load_and_get_of_an_unknown_id(store: SagaStore) -> None:
    assert store.load("no-such-saga") is None
    with pytest.raises(SagaNotFound, match="no saga 'no-such-saga' in the store"):
        store.get("no-such-saga")


# -- commit ---------------------------------------------------------------------------------------


def test_commit_with_the_right_version_stores_and_bumps_it(store: SagaStore) -> None:
    saga_id = create_running(store)
    before = store.get(saga_id)
    assert before.version == 0

    t = succeed(before, 0, {"reservation": "r-1"})
    assert commit(store, before, t) == []

    after = store.get(saga_id)
    assert after.version == 1
    assert after == replace(t.saga, version=1)
    assert after.steps[0].status is StepStatus.COMPLETED
    assert after.steps[0].result == {"reservation": "r-1"}
    assert after.steps[1].status is StepStatus.EXECUTING
    assert after.current_step == 1
    assert after.updated_at == LATER

    t2 = succeed(after, 1, {"charge": "c-1"})
    commit(store, after, t2)
    assert store.get(saga_id).version == 2


def test_commit_with_a_stale_version_conflicts_and_changes_nothing(store: SagaStore) -> None:
    saga_id = create_running(store)
    stale = store.get(saga_id)
    commit(store, stale, succeed(stale, 0, {"reservation": "r-1"}))
    current = store.get(saga_id)
    history = store.history(saga_id)
    events = store.events(saga_id)

    losing = fail(stale, 0)
    with pytest.raises(ConcurrencyConflict, match=f"saga {saga_id} changed since version 0"):
        commit(store, stale, losing)

    assert store.get(saga_id) == current
    assert store.history(saga_id) == history
    assert store.events(saga_id) == events


def test_commit_of_an_unknown_saga_conflicts(store: SagaStore) -> None:
    t = started(new_id())
    ghost = t.saga
    with pytest.raises(ConcurrencyConflict):
        commit(store, ghost, succeed(ghost, 0, None))
    assert store.load(ghost.saga_id) is None
    assert store.history(ghost.saga_id) == []


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_commits_exactly_one_wins(store: SagaStore, round_: int) -> None:
    saga_id = create_running(store)
    loaded_both = threading.Barrier(2, timeout=30)
    outcomes: dict[str, object] = {}

    def contender(label: str, make: Any) -> None:
        try:
            seen = store.get(saga_id)
            t = make(seen)
            loaded_both.wait()
            commit(store, seen, t)
            outcomes[label] = t
        except BaseException as exc:
            loaded_both.abort()  # never leave the other thread waiting
            outcomes[label] = exc

    threads = [
        threading.Thread(target=contender, args=("success", lambda s: succeed(s, 0, {"ok": 1}))),
        threading.Thread(target=contender, args=("failure", lambda s: fail(s, 0))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()

    winners = {k: v for k, v in outcomes.items() if isinstance(v, Transition)}
    losers = {k: v for k, v in outcomes.items() if not isinstance(v, Transition)}
    assert len(winners) == 1, outcomes
    assert len(losers) == 1, outcomes
    assert isinstance(next(iter(losers.values())), ConcurrencyConflict), outcomes

    (winner,) = winners.values()
    stored = store.get(saga_id)
    assert stored == replace(winner.saga, version=1)
    recorded = [h.event for h in store.history(saga_id)]
    assert recorded[3:] == [h.event for h in winner.history]
    if "success" in winners:
        assert HistoryEvent.STEP_FAILED not in recorded
    else:
        assert HistoryEvent.STEP_COMPLETED not in recorded


# -- history and events ---------------------------------------------------------------------------


def test_history_rows_are_appended_in_order(store: SagaStore) -> None:
    saga_id = create_running(store)
    other_id = create_running(store)
    saga = store.get(saga_id)
    t1 = succeed(saga, 0, {"reservation": "r-1"})
    commit(store, saga, t1)
    saga = store.get(saga_id)
    commit(store, saga, fail(saga, 1))

    rows = store.history(saga_id)

    assert [r.event for r in rows] == [
        HistoryEvent.SAGA_RECORDED,
        HistoryEvent.SAGA_STARTED,
        HistoryEvent.STEP_DISPATCHED,
        HistoryEvent.STEP_COMPLETED,
        HistoryEvent.STEP_DISPATCHED,
        HistoryEvent.STEP_FAILED,
        HistoryEvent.COMPENSATION_STARTED,
        HistoryEvent.COMPENSATION_DISPATCHED,
    ]
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    assert len({r.id for r in rows}) == len(rows)
    assert {r.saga_id for r in rows} == {saga_id}
    assert [r.at for r in rows] == [NOW] * 3 + [LATER] * 5
    assert (rows[0].from_state, rows[0].to_state) == (None, "started")
    assert (rows[1].from_state, rows[1].to_state) == ("started", "pending")
    assert (rows[6].from_state, rows[6].to_state) == ("pending", "compensating")
    assert rows[4].step == "charge_payment"
    assert rows[4].detail == {
        "task": "payments.charge",
        "queue": "payments",
        "task_id": f"{saga_id}.1.action.1",
        "attempt": 1,
    }
    declined = replace(DECLINED, task_id=f"{saga_id}.1.action.1")
    assert rows[5].detail == {"error": declined.to_json()}
    assert rows[0].step is None and rows[0].detail is None
    assert [r.event for r in store.history(other_id)] == [
        HistoryEvent.SAGA_RECORDED,
        HistoryEvent.SAGA_STARTED,
        HistoryEvent.STEP_DISPATCHED,
    ]
    assert store.history("no-such-saga") == []


def drive_to_completion(store: SagaStore, saga_id: str) -> list[int]:
    event_ids: list[int] = []
    for position in range(len(STEPS)):
        saga = store.get(saga_id)
        event_ids += commit(store, saga, succeed(saga, position, {"n": position}))
    return event_ids


def test_events_are_recorded_and_marked_published(store: SagaStore) -> None:
    saga_id = create_running(store)
    event_ids = drive_to_completion(store, saga_id)
    assert store.get(saga_id).state is SagaState.COMPLETED
    assert len(event_ids) == 1

    (row,) = store.events(saga_id)
    assert row.id == event_ids[0]
    assert row.saga_id == saga_id
    assert row.name == "OrderCompleted"
    assert row.payload == {
        "saga_id": saga_id,
        "saga_type": "order",
        "state": "completed",
        "error": None,
        "results": {
            "reserve_stock": {"n": 0},
            "charge_payment": {"n": 1},
            "schedule_shipping": {"n": 2},
        },
        "compensated": [],
    }
    assert row.created_at == LATER
    assert row.published_at is None

    store.mark_published([])  # nothing to do, and no error
    assert store.events(saga_id)[0].published_at is None

    low = datetime.now(timezone.utc) - timedelta(seconds=5)
    store.mark_published(event_ids)
    high = datetime.now(timezone.utc) + timedelta(seconds=5)
    (marked,) = store.events(saga_id)
    assert marked.published_at is not None
    assert marked.published_at.tzinfo is not None
    assert low <= marked.published_at <= high
    assert marked.created_at == LATER


def test_mark_published_touches_only_the_given_events(store: SagaStore) -> None:
    saga_id = create_running(store)
    saga = store.get(saga_id)
    t = succeed(saga, 0, None)
    first = PublishEvent("First", {"n": 1})
    second = PublishEvent("Second", {"n": 2, "nested": {"x": [1, 2]}})
    ids = store.commit(saga, t.saga, t.changed_steps, t.history, [first, second])
    assert len(ids) == 2
    assert ids[0] < ids[1]

    store.mark_published(ids[:1])

    rows = store.events(saga_id)
    assert [(r.id, r.name, r.payload) for r in rows] == [
        (ids[0], "First", {"n": 1}),
        (ids[1], "Second", {"n": 2, "nested": {"x": [1, 2]}}),
    ]
    assert rows[0].published_at is not None
    assert rows[1].published_at is None


# -- listing and counting -------------------------------------------------------------------------


def test_list_sagas_filters_orders_and_pages(store: SagaStore) -> None:
    saga_type = f"list-{uuid.uuid4().hex[:8]}"
    base = datetime(2090, 1, 1, tzinfo=timezone.utc)  # newer than anything else in this database
    created: list[tuple[str, SagaState]] = []
    for i in range(6):
        saga_id = f"{saga_type}-{i}"
        saga = new_saga(saga_id, saga_type, {"i": i}, STEPS, base + timedelta(minutes=i))
        if i % 2 == 0:
            saga = begin(saga, base + timedelta(minutes=i)).saga
        assert store.create(saga)
        created.append((saga_id, saga.state))
    newest_first = [saga_id for saga_id, _ in reversed(created)]
    pending = [saga_id for saga_id, state in reversed(created) if state is SagaState.PENDING]
    assert len(pending) == 3
    other_type = create_running(store, saga_type=f"{saga_type}-x", now=base - timedelta(hours=1))

    listed = store.list_sagas(saga_type=saga_type)
    assert [s.saga_id for s in listed] == newest_first
    assert all(s.steps == () for s in listed)
    assert listed[0].data == {"i": 5}
    assert listed[-1].created_at == base

    assert [s.saga_id for s in store.list_sagas(saga_type=saga_type, state="pending")] == pending
    by_enum = store.list_sagas(saga_type=saga_type, state=SagaState.PENDING)
    assert [s.saga_id for s in by_enum] == pending
    assert store.list_sagas(saga_type=saga_type, state=SagaState.COMPLETED) == []

    page = store.list_sagas(saga_type=saga_type, limit=2, offset=1)
    assert [s.saga_id for s in page] == newest_first[1:3]
    assert store.list_sagas(saga_type=saga_type, limit=10, offset=6) == []

    # Without a type filter: our pending sagas are the newest in the whole store.
    newest_pending = store.list_sagas(state=SagaState.PENDING, limit=3)
    assert [s.saga_id for s in newest_pending] == pending
    started = store.list_sagas(state=SagaState.STARTED)
    assert {s.state for s in started} == {SagaState.STARTED}
    assert other_type not in {s.saga_id for s in store.list_sagas(saga_type=saga_type, limit=100)}


def test_list_sagas_breaks_ties_by_id_descending(store: SagaStore) -> None:
    saga_type = f"tie-{uuid.uuid4().hex[:8]}"
    ids = [f"{saga_type}-{suffix}" for suffix in ("b", "c", "a")]
    for saga_id in ids:
        assert store.create(new_saga(saga_id, saga_type, {}, STEPS, NOW))
    assert [s.saga_id for s in store.list_sagas(saga_type=saga_type)] == sorted(ids, reverse=True)


def test_list_sagas_rejects_an_unknown_state(store: SagaStore) -> None:
    with pytest.raises(ValueError):
        store.list_sagas(state="sleeping")


def test_count_by_state(store: SagaStore) -> None:
    running = [create_running(store) for _ in range(3)]
    fresh = new_id()
    assert store.create(new_saga(fresh, "order", DATA, STEPS, NOW))
    done = create_running(store)
    drive_to_completion(store, done)
    ours = [*running, fresh, done]

    assert store.count_by_state(ours) == {"pending": 3, "started": 1, "completed": 1}
    assert store.count_by_state(running[:1]) == {"pending": 1}
    assert store.count_by_state([]) == {}
    assert store.count_by_state(["no-such-saga"]) == {}
    everything = store.count_by_state()
    assert everything["pending"] >= 3
    assert everything["started"] >= 1
    assert everything["completed"] >= 1
    assert all(isinstance(n, int) for n in everything.values())


# -- timestamps -----------------------------------------------------------------------------------


def test_timestamps_come_back_timezone_aware(store: SagaStore) -> None:
    saga_id = create_running(store)
    drive_to_completion(store, saga_id)
    saga = store.get(saga_id)
    listed = store.list_sagas(saga_type="order", limit=1000)

    values = datetimes(saga)
    values += [r.at for r in store.history(saga_id)]
    values += [r.created_at for r in store.events(saga_id)]
    values += [s.created_at for s in listed if s.created_at is not None]
    assert len(values) > 10
    for value in values:
        assert value.tzinfo is not None
        assert value.utcoffset() is not None
    assert saga.created_at == NOW
    assert saga.finished_at == LATER
    assert saga.steps[2].finished_at == LATER


def test_non_utc_timestamps_keep_their_instant(
    store: SagaStore, backend: Backend, request: pytest.FixtureRequest
) -> None:
    plus_two = timezone(timedelta(hours=2))
    at = datetime(2024, 5, 17, 14, 30, 45, 123456, tzinfo=plus_two)
    saga_id = new_id()
    assert store.create(new_saga(saga_id, "order", DATA, STEPS, at))
    assert store.get(saga_id).created_at == at  # == compares instants: 12:30:45 UTC


# -- failures -------------------------------------------------------------------------------------


def test_unreachable_postgres_raises_store_unavailable() -> None:
    url = postgres_url().set(host="127.0.0.1", port=1, password="s3cret-pw")
    store = open_store(url.render_as_string(hide_password=False))
    try:
        with pytest.raises(StoreUnavailable, match="unavailable") as info:
            store.ping()
        assert "s3cret-pw" not in str(info.value)
        assert "127.0.0.1:1" in str(info.value)
        with pytest.raises(StoreUnavailable):
            store.load("any")
        with pytest.raises(StoreUnavailable):
            store.create(started(new_id()).saga)
        with pytest.raises(StoreUnavailable):
            store.list_sagas()
        with pytest.raises(StoreUnavailable):
            store.count_by_state()
    finally:
        store.dispose()


def test_sqlite_in_a_missing_directory_raises_store_unavailable(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    store = open_store(f"sqlite:///{missing / 'sagaflow.db'}")
    with pytest.raises(StoreUnavailable, match="does not exist"):
        store.ping()
    with pytest.raises(StoreUnavailable):
        store.load("any")
    with pytest.raises(StoreUnavailable):
        store.upgrade()
    assert not missing.exists()


def test_sqlite_store_waits_for_a_writer_in_rollback_journal_mode(tmp_path: Path) -> None:
    """SQLite refuses the switch to WAL at once, without busy_timeout, while another connection
    writes in rollback-journal mode: a store that connects then waits for that writer."""
    path = tmp_path / "sagaflow.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN")
    writer.execute("CREATE TABLE other (x)")
    store = open_store(f"sqlite:///{path}")
    statements: list[str] = []
    sa.event.listen(
        store.engine,
        "connect",
        lambda dbapi_conn, _: dbapi_conn.set_trace_callback(statements.append),
        insert=True,
    )
    errors: list[BaseException] = []

    def ping() -> None:
        try:
            store.ping()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=ping)
    thread.start()
    try:
        poll(
            lambda: "PRAGMA journal_mode=WAL" in statements or errors,
            10,
            lambda: f"the store has not tried to switch to WAL; it ran {statements}",
        )
    finally:
        writer.execute("COMMIT")
        thread.join(timeout=60)
        store.dispose()
    assert not thread.is_alive(), "the store still waits after the writer committed"
    writer.close()
    assert errors == []
    assert journal_mode(path) == "wal"


def test_sqlite_upgrade_leaves_the_database_in_wal_mode(tmp_path: Path) -> None:
    """The first migration runs in WAL mode, so connections opened meanwhile are not refused."""
    path = tmp_path / "sagaflow.db"
    store = open_store(f"sqlite:///{path}")
    try:
        store.upgrade()
    finally:
        store.dispose()
    assert journal_mode(path) == "wal"


def journal_mode(path: Path) -> str:
    """The journal mode a new connection finds in the file."""
    plain = sqlite3.connect(path)
    try:
        mode: str = plain.execute("PRAGMA journal_mode").fetchone()[0]
        return mode
    finally:
        plain.close()


def test_upgrade_of_unreachable_postgres_raises_store_unavailable() -> None:
    store = open_store(postgres_url().set(port=1).render_as_string(hide_password=False))
    try:
        with pytest.raises(StoreUnavailable):
            store.upgrade()
    finally:
        store.dispose()


def test_missing_schema_raises_store_unavailable(
    blank_store: SagaStore, backend: Backend, request: pytest.FixtureRequest
) -> None:
    blank_store.ping()  # the database itself is reachable
    assert current_revision(blank_store) is None
    with pytest.raises(StoreUnavailable) as info:
        blank_store.load("any")
    assert "`sagaflow db upgrade`" in str(info.value)
    for operation in (
        lambda: blank_store.create(started(new_id()).saga),
        lambda: blank_store.list_sagas(),
        lambda: blank_store.count_by_state(),
        lambda: blank_store.history("any"),
        lambda: blank_store.events("any"),
    ):
        with pytest.raises(StoreUnavailable, match="`sagaflow db upgrade`"):
            operation()


def test_upgrade_makes_a_blank_database_usable(blank_store: SagaStore) -> None:
    blank_store.upgrade()
    assert current_revision(blank_store) == head_revision()
    saga_id = create_running(blank_store)
    assert blank_store.get(saga_id).state is SagaState.PENDING


# -- migrations -----------------------------------------------------------------------------------


def test_migrations_build_exactly_the_schema(store: SagaStore) -> None:
    with store.engine.connect() as conn:

        def built_on_this_database(item: Any, *_: Any) -> bool:
            only_on = getattr(item, "_ddl_if", None)  # Index(...).ddl_if(dialect=...)
            return only_on is None or only_on.dialect in (None, conn.dialect.name)

        context = MigrationContext.configure(conn, opts={"include_object": built_on_this_database})
        diffs = compare_metadata(context, metadata)
        tables = set(sa.inspect(conn).get_table_names())
        indexes = {i["name"] for i in sa.inspect(conn).get_indexes("sagaflow_sagas")}

    def is_version_table(diff: Any) -> bool:
        return (
            isinstance(diff, tuple)
            and diff[0] == "remove_table"
            and getattr(diff[1], "name", None) == VERSION_TABLE
        )

    assert [d for d in diffs if not is_version_table(d)] == []
    assert tables == {*SAGA_TABLES, VERSION_TABLE}
    # The input's search index is PostgreSQL's (GIN); SQLite reads the input without one.
    assert ("ix_sagaflow_sagas_data" in indexes) == (conn.dialect.name == "postgresql")
    assert "alembic_version" not in tables  # an application's own Alembic table is left alone


def test_store_is_at_the_head_revision(store: SagaStore) -> None:
    head = head_revision()
    assert head is not None
    assert current_revision(store) == head
    store.upgrade()  # idempotent
    assert current_revision(store) == head
    with store.engine.connect() as conn:
        versions = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    assert [v for (v,) in versions] == [head]


# -- transitions that wait for each other --------------------------------------------------------


def test_a_transition_that_waited_for_the_lock_sees_the_steps_the_holder_wrote(
    store: SagaStore,
) -> None:
    """The second decider must decide on the first one's result, steps included (a join that
    locks the saga row re-reads only that row after waiting, on PostgreSQL)."""
    saga_id = create_running(store)
    holding = threading.Event()
    release = threading.Event()
    seen: list[SagaRecord] = []

    def first(saga: SagaRecord) -> Transition | Ignored:
        holding.set()
        assert release.wait(10)
        return apply(
            saga, StepSucceeded(0, Phase.ACTION, 1, {"r": 1}, f"{saga_id}.0.action.1"), NOW
        )

    def second(saga: SagaRecord) -> Transition | Ignored:
        seen.append(saga)
        return apply(
            saga, StepSucceeded(0, Phase.ACTION, 1, {"r": 2}, f"{saga_id}.0.action.1"), NOW
        )

    results: dict[str, Any] = {}
    a = threading.Thread(target=lambda: results.update(a=store.transition(saga_id, first)))
    a.start()
    assert holding.wait(10)
    b = threading.Thread(target=lambda: results.update(b=store.transition(saga_id, second)))
    b.start()
    b.join(timeout=0.5)  # b is blocked on the lock while a holds it
    assert b.is_alive()
    release.set()
    a.join(timeout=30)
    b.join(timeout=30)
    assert isinstance(results["a"].outcome, Transition)
    # b waited, then saw step 0 completed by a, so the duplicate success changed nothing.
    assert seen[0].steps[0].status is StepStatus.COMPLETED
    assert isinstance(results["b"].outcome, Ignored)
    assert store.get(saga_id).steps[0].result == {"r": 1}


def test_downgrading_and_upgrading_keeps_the_data(backend: Backend, tmp_path: Path) -> None:
    from sagaflow.store.migrate import downgrade

    # SQLite: a file of its own (the module's store stays at head for the other tests).
    sqlite = backend.name == "sqlite"
    store = open_store(f"sqlite:///{tmp_path / 'down.db'}") if sqlite else backend.store
    if sqlite:
        store.upgrade()
    saga_id = create_running(store)
    downgrade(store, "0002")
    store.upgrade()
    assert len(store.get(saga_id).steps) == len(STEPS)
    if sqlite:
        store.dispose()


# -- PostgreSQL's pipelined writes ---------------------------------------------------------------


def test_json_none_is_stored_as_json_null_on_every_backend(store: SagaStore) -> None:
    # SQLAlchemy's JSON type writes None as JSON null; PostgreSQL's pipelined path must too, so
    # a query on these columns means the same on both backends.
    saga_id = create_running(store)
    before = store.get(saga_id)
    commit(store, before, succeed(before, 0, None))
    with store.engine.connect() as conn:
        sql_nulls = conn.execute(
            sa.text(
                "SELECT count(*) FROM sagaflow_steps WHERE saga_id = :id AND "
                "(error IS NULL OR result IS NULL OR retry IS NULL)"
            ),
            {"id": saga_id},
        ).scalar_one()
    assert sql_nulls == 0
    assert store.get(saga_id).steps[0].result is None


def test_a_store_connection_the_server_dropped_fails_once_then_recovers(backend: Backend) -> None:
    if backend.name != "postgresql":
        pytest.skip("terminates PostgreSQL backends")
    store = open_store(backend.url)
    try:
        saga_id = create_running(store)
        drop_pooled_connection(store, backend.store.engine)

        def decide(saga: SagaRecord) -> Transition:
            return succeed(saga, 0, {"reservation": "r-1"})

        with pytest.raises(StoreUnavailable, match="unavailable"):
            store.transition(saga_id, decide)
        store.transition(saga_id, decide)  # on a new connection
        saga = store.get(saga_id)
        assert saga.version == 1 and saga.steps[0].result == {"reservation": "r-1"}
    finally:
        store.dispose()


def test_a_dropped_connection_fails_each_pipelined_write_once_and_quietly(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """StoreUnavailable, then a new connection; nothing logged on the way (psycopg warned of
    each pipeline it could not leave, SQLAlchemy's pool of each connection it could not roll
    back)."""
    if backend.name != "postgresql":
        pytest.skip("terminates PostgreSQL backends")
    store = open_store(backend.url)
    try:
        saga_id = create_running(store)
        operations = {
            "transition": lambda: store.transition(saga_id, outcome_of(0)),
            "create": lambda: store.create(started(new_id()).saga),
            "record_ignored": lambda: store.record_ignored(saga_id, None, {"outcome": "failed"}),
            "mark_published": lambda: store.mark_published([1]),
        }
        for name, operation in operations.items():
            store.forget()  # the transition loads the saga under its lock
            drop_pooled_connection(store, backend.store.engine)
            caplog.clear()
            with caplog.at_level(logging.INFO), pytest.raises(StoreUnavailable):
                operation()
            assert [r for r in caplog.records if r.levelno >= logging.WARNING] == [], name
            operation()  # on a new connection
        assert store.get(saga_id).version == 1
        assert store.ignored(saga_id).count == 1
    finally:
        store.dispose()


def test_an_error_mid_pipeline_is_raised_without_a_warning(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A statement's error can come back while later ones are still being sent (a loaded
    machine): leaving the pipeline then fails too, and psycopg warned of it on every refused
    write. The error is raised, the connection stays usable."""
    if backend.name != "postgresql":
        pytest.skip("psycopg's pipeline mode")
    import time

    import psycopg

    from sagaflow.store.postgres import _pipelined

    raw = psycopg.connect(
        sa.make_url(backend.url).set(drivername="postgresql").render_as_string(False)
    )
    try:

        def refused() -> None:
            failing = raw.cursor()
            failing.execute("SELECT 1 / 0")
            time.sleep(0.2)  # its error arrives before the next statements are sent
            raw.cursor().execute("SELECT 2")
            time.sleep(0.2)
            raw.cursor().execute("SELECT 3")
            raw.commit()

        with caplog.at_level(logging.INFO), pytest.raises(psycopg.errors.DivisionByZero):
            _pipelined(raw, refused)
        assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []
        raw.rollback()
        assert raw.execute("SELECT 4").fetchone() == (4,)
    finally:
        raw.close()


def test_postgres_without_pipeline_mode_stores_the_same_transitions(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a libpq older than 14 (or another driver) the store runs each statement through
    # SQLAlchemy: the same rows, the same conflict check.
    if backend.name != "postgresql":
        pytest.skip("PostgreSQL's two write paths")
    from sagaflow.store import postgres as store_pg

    monkeypatch.setattr(store_pg, "uses_pipeline", lambda conn: False)
    store = backend.store
    saga_id = create_running(store)
    before = store.get(saga_id)
    t = succeed(before, 0, {"reservation": "r-1"})
    commit(store, before, t)
    after = store.get(saga_id)
    assert after.version == 1 and after.steps[0].result == {"reservation": "r-1"}
    with pytest.raises(ConcurrencyConflict):
        commit(store, before, fail(before, 0))
    assert store.get(saga_id) == after
    assert [h.event for h in store.history(saga_id)][-1] == t.history[-1].event


def test_postgres_connections_are_named_sagaflow_unless_the_url_names_them(
    backend: Backend,
) -> None:
    if backend.name != "postgresql":
        pytest.skip("application_name is PostgreSQL's")
    url = sa.make_url(backend.url).update_query_dict({"application_name": "billing"})
    named = open_store(url.render_as_string(hide_password=False))
    try:
        for store, expected in ((backend.store, "sagaflow"), (named, "billing")):
            with store.engine.connect() as conn:
                name = conn.execute(sa.text("SHOW application_name")).scalar_one()
            assert name == expected
    finally:
        named.dispose()


def test_dispose_all_closes_every_stores_idle_connections(backend: Backend) -> None:
    """What the suite runs after each test, and what a shutdown hook can call."""
    if backend.name != "postgresql":
        pytest.skip("counts a server's connections")
    tag = f"dispose-all-{uuid.uuid4().hex[:8]}"
    url = sa.make_url(backend.url).update_query_dict({"application_name": tag})
    stores = [open_store(url.render_as_string(hide_password=False)) for _ in range(3)]

    def connected() -> int:
        with backend.store.engine.connect() as conn:
            query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = :tag"
            return int(conn.execute(sa.text(query), {"tag": tag}).scalar_one())

    saga_id = create_running(backend.store)
    for store in stores:
        store.get(saga_id)
    assert connected() == 3
    assert SqlSagaStore.dispose_all() >= 3  # the backend's own store too
    assert connected() == 0
    assert stores[0].get(saga_id).saga_id == saga_id  # a store still in use connects again
    assert connected() == 1
    stores[0].dispose()


# -- remembered sagas -----------------------------------------------------------------------------


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the sagas the store loads from the database from now on (the check of
    remembered sagas, which loads them too, is off)."""
    from sagaflow.store.cache import CHECK_REMEMBERED_ENV
    from sagaflow.store.sql import SqlSagaStore

    monkeypatch.delenv(CHECK_REMEMBERED_ENV, raising=False)
    loaded: list[str] = []
    real = SqlSagaStore._load

    def counting(store: SqlSagaStore, conn: Any, saga_id: str, *, lock: bool) -> SagaRecord | None:
        loaded.append(saga_id)
        return real(store, conn, saga_id, lock=lock)

    monkeypatch.setattr(SqlSagaStore, "_load", counting)
    return loaded


def outcome_of(position: int, result: Any = None, failed: bool = False) -> Any:
    """A decider applying step `position`'s success (or failure) to whatever it is given."""

    def decide(saga: SagaRecord) -> Transition | Ignored:
        step = saga.steps[position]
        if failed:
            error = replace(DECLINED, task_id=step.task_id)
            event: StepSucceeded | StepFailed = StepFailed(
                position, Phase.ACTION, step.attempts, error
            )
        else:
            event = StepSucceeded(position, Phase.ACTION, step.attempts, result, step.task_id)
        return apply(saga, event, LATER)

    return decide


def test_a_saga_the_store_wrote_is_decided_on_as_stored_without_loading_it(
    store: SagaStore, loads: list[str]
) -> None:
    saga_id = create_running(store)
    assert isinstance(store.transition(saga_id, outcome_of(0, {"r": 1})).outcome, Transition)
    assert loads == [saga_id]  # created elsewhere: loaded once
    stored = store.get(saga_id)
    loads.clear()
    seen: list[SagaRecord] = []

    def record_and_decide(saga: SagaRecord) -> Transition | Ignored:
        seen.append(saga)
        return outcome_of(1, {"r": 2})(saga)

    decision = store.transition(saga_id, record_and_decide)
    assert isinstance(decision.outcome, Transition)
    assert loads == []
    # What it decided on is exactly what loading the saga gives, on this backend.
    assert seen == [stored]
    after = store.get(saga_id)
    assert after.version == stored.version + 1
    assert [s.status for s in after.steps[:3]] == [
        StepStatus.COMPLETED,
        StepStatus.COMPLETED,
        StepStatus.EXECUTING,
    ]
    assert after.steps[1].result == {"r": 2}


def test_a_saga_changed_by_another_store_is_loaded_before_deciding(
    backend: Backend, store: SagaStore, loads: list[str]
) -> None:
    """Remembered at step 1 running; another store fails step 1; a late success of step 1
    then reaches this store. Decided on memory it would complete the step: the version check
    refuses that write, and decided on the stored saga it is ignored."""
    other = open_store(backend.url)
    try:
        saga_id = create_running(store)
        store.transition(saga_id, outcome_of(0, {"r": 1}))  # remembered: step 1 executing
        assert isinstance(other.transition(saga_id, outcome_of(1, failed=True)).outcome, Transition)
        failed_version = store.get(saga_id).version
        loads.clear()
        decision = store.transition(saga_id, outcome_of(1, {"r": 2}))
        assert isinstance(decision.outcome, Ignored), decision.outcome
        assert loads == [saga_id]
        after = store.get(saga_id)
        assert after.version == failed_version
        assert after.state is SagaState.COMPENSATING
        assert after.steps[1].status is StepStatus.FAILED
        assert after.steps[1].result is None
    finally:
        other.dispose()


def test_an_event_a_stale_memory_ignores_is_decided_on_the_stored_saga(
    backend: Backend, store: SagaStore
) -> None:
    """Remembered at step 1 running; another store completes step 1; step 2's success then
    reaches this store. Its memory has not started step 2 and would ignore the event."""
    other = open_store(backend.url)
    try:
        saga_id = create_running(store)
        store.transition(saga_id, outcome_of(0, {"r": 1}))
        other.transition(saga_id, outcome_of(1, {"r": 2}))
        decision = store.transition(saga_id, outcome_of(2, {"r": 3}))
        assert isinstance(decision.outcome, Transition), decision.outcome
        assert store.get(saga_id).state is SagaState.COMPLETED
    finally:
        other.dispose()


def test_remembered_sagas_are_bounded_and_finished_ones_forgotten(
    backend: Backend, loads: list[str]
) -> None:
    small = open_store(backend.url, remember=2)
    try:
        first, second, third = (create_running(small) for _ in range(3))
        for saga_id in (first, second, third):
            small.transition(saga_id, outcome_of(0))
        loads.clear()
        small.transition(third, outcome_of(1))
        small.transition(first, outcome_of(1))  # the oldest: no longer remembered
        assert loads == [first]
        loads.clear()
        small.transition(third, outcome_of(2))  # completed: nothing left to remember
        small.transition(third, outcome_of(2))  # a duplicate, decided on the stored saga
        assert loads == [third]
    finally:
        small.dispose()


def test_the_remembered_check_reports_a_saga_changed_without_its_version(
    backend: Backend, store: SagaStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check the test suite runs with: a remembered saga that is not what is stored,
    though the version matches, is written down."""
    from sagaflow.store.cache import CHECK_REMEMBERED_ENV

    monkeypatch.setenv(CHECK_REMEMBERED_ENV, str(tmp_path))
    saga_id = create_running(store)
    store.transition(saga_id, outcome_of(0, {"r": 1}))
    with store.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE sagaflow_steps SET result = :r WHERE saga_id = :id AND position = 0"),
            {"r": '{"r": "edited"}', "id": saga_id},
        )
    store.transition(saga_id, outcome_of(1))
    reports = [p.read_text() for p in tmp_path.iterdir()]
    assert len(reports) == 1, reports
    assert saga_id in reports[0] and '"steps"' in reports[0] and "edited" in reports[0]


def test_a_new_connection_forgets_what_the_store_remembered(
    store: SagaStore, loads: list[str]
) -> None:
    """A new connection may reach another server (a failover, a restore) where the saga went
    back to a version this process remembers with other contents."""
    saga_id = create_running(store)
    store.transition(saga_id, outcome_of(0))
    store.engine.dispose()  # the next transaction opens a new connection
    loads.clear()
    store.transition(saga_id, outcome_of(1))
    assert loads == [saga_id]


def test_a_saga_with_a_large_input_is_not_remembered(backend: Backend, loads: list[str]) -> None:
    from sagaflow.store.cache import REMEMBERED_SAGA_BYTES

    large = open_store(backend.url)
    try:
        saga_id = new_id()
        data = {"blob": "x" * REMEMBERED_SAGA_BYTES}
        t = begin(new_saga(saga_id, "order", data, STEPS, NOW), NOW)
        assert large.create(t.saga)
        large.transition(saga_id, outcome_of(0))
        large.transition(saga_id, outcome_of(1))
        assert loads == [saga_id, saga_id]
    finally:
        large.dispose()


def test_a_saga_loaded_for_an_ignored_event_is_remembered(
    store: SagaStore, loads: list[str]
) -> None:
    saga_id = create_running(store)
    store.transition(saga_id, outcome_of(0))
    store.forget()
    loads.clear()
    stale = store.transition(saga_id, lambda saga: Ignored("a duplicate"))
    assert isinstance(stale.outcome, Ignored)
    assert loads == [saga_id]
    loads.clear()
    assert isinstance(store.transition(saga_id, outcome_of(1)).outcome, Transition)
    assert loads == []


def test_an_error_with_empty_fields_reads_back_as_stored(store: SagaStore) -> None:
    """to_json leaves an empty traceback and task id out, so the record built from an
    outcome must hold None too: what loading the saga gives, and what the store remembers."""
    error = ErrorInfo.from_json(
        {"type": "Declined", "message": "no", "traceback": "", "task_id": ""}
    )
    assert error.traceback is None and error.task_id is None
    assert ErrorInfo.from_json(error.to_json()) == error
