"""Durable starts: SagaClient.start keeps the saga before it returns its id. It records it as
`requested` in the store before sending its start, so a start message lost with the broker is
started by the recovery sweep instead of vanishing; and when the store does not answer, it keeps
the start in a local outbox file that is drained into the store once it answers again."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from sagaflow import SagaState, StoreUnavailable
from sagaflow.client.outbox import OutboxDrainer, StartOutbox, StartRequest
from sagaflow.client.saga_client import BrokerUnavailable, Durability, OutboxUnavailable, SagaClient
from sagaflow.config import Settings
from sagaflow.core.vocabulary import HistoryEvent
from sagaflow.engine.orchestrator import RecoveryReport
from sagaflow.messaging.orchestrator_app import create_orchestrator_app, orchestrator_of
from sagaflow.store.factory import open_store
from sagaflow.store.protocol import utcnow
from sagaflow.store.schema import history, sagas
from tests.conftest import (
    POSTGRES_ADMIN_URL,
    REDIS_URL,
    ROOT,
    Stack,
    drop_pooled_connection,
    poll,
    query_plans,
    require_redis,
)

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
UNREACHABLE_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:1/sagaflow"
TRIP_ONCE = [("a1", "action"), ("b2", "action"), ("a3", "action"), ("b4", "action")]
# The store outages below refuse new connections to the stack's PostgreSQL database.
POSTGRES_STACK = pytest.mark.parametrize("stack", ["redis-postgres"], indirect=True)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def broker_down_client(stack: Stack) -> Iterator[SagaClient]:
    """A producer that reaches the store but not the broker: every start message is lost."""
    client = SagaClient(replace(stack.settings, broker_url=UNREACHABLE_REDIS), store=stack.store)
    yield client
    client.app.close()


def events_of(stack: Stack, saga_id: str) -> list[str]:
    return [h.event for h in stack.store.history(saga_id)]


# -- the normal path ---------------------------------------------------------------------------


def test_start_records_the_request_before_the_saga_runs(stack: Stack) -> None:
    saga_id = stack.client.start("trip", {"n": 1}, saga_id=new_id("requested"))
    # Recorded before start() returned, whatever the orchestrator has done since.
    recorded = stack.store.load(saga_id)
    assert recorded is not None and recorded.data == {"n": 1}
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.COMPLETED
    rows = stack.store.history(saga_id)
    assert [h.event for h in rows[:3]] == [
        HistoryEvent.SAGA_REQUESTED,
        HistoryEvent.SAGA_RECORDED,
        HistoryEvent.SAGA_STARTED,
    ]
    assert [(h.from_state, h.to_state) for h in rows[:2]] == [
        (None, "requested"),
        ("requested", "started"),
    ]
    assert rows[1].detail is None  # started by its start message, not by the sweep
    assert saga.created_at == recorded.created_at
    assert stack.executions(saga_id) == TRIP_ONCE


# -- a lost start message ----------------------------------------------------------------------


def test_in_a_broker_outage_later_starts_try_the_broker_once_and_are_kept(
    stack: Stack, broker_down_client: SagaClient
) -> None:
    took = []
    for n in range(3):
        began = time.monotonic()
        receipt = broker_down_client.submit("trip", {"n": n}, saga_id=new_id("outage"))
        took.append(time.monotonic() - began)
        assert receipt.durability is Durability.STORE
        assert stack.store.get(receipt.saga_id).state is SagaState.REQUESTED
    # The first start retried (about 2 s of kombu's back-off); the next ones, within the
    # pause, gave up at the first refusal instead.
    assert took[0] > 1.0, took
    assert max(took[1:]) < took[0] / 2, took


@pytest.mark.timeout(120)
def test_a_start_whose_message_is_lost_is_started_by_the_sweep(
    stack: Stack, broker_down_client: SagaClient
) -> None:
    saga_id = new_id("lost-start")
    # The broker cannot be reached, but the saga is recorded: start() returns its id.
    assert broker_down_client.start("trip", {"n": 2}, saga_id=saga_id, deadline=3600) == saga_id
    request = stack.store.get(saga_id)
    assert request.state is SagaState.REQUESTED and request.steps == ()
    assert request.deadline_at is not None and request.created_at is not None
    result = stack.cli("recover", "--older-than", "0", "--json")
    assert result.returncode == 0, result.stderr
    assert {"saga_id": saga_id} in json.loads(result.stdout)["started"]
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.COMPLETED
    assert stack.executions(saga_id) == TRIP_ONCE
    # The deadline counts from the request: the moment the producer was given the id.
    assert saga.deadline_at == request.deadline_at
    assert saga.deadline_at - request.created_at == timedelta(seconds=3600)
    recorded = [h for h in stack.store.history(saga_id) if h.event == HistoryEvent.SAGA_RECORDED]
    assert [h.detail for h in recorded] == [{"by": "recovery"}]


def test_a_requested_saga_cancelled_before_it_starts_never_runs(
    stack: Stack, broker_down_client: SagaClient
) -> None:
    saga_id = new_id("cancelled-request")
    broker_down_client.start("trip", {"n": 2}, saga_id=saga_id)
    assert stack.store.get(saga_id).state is SagaState.REQUESTED
    stack.client.cancel(saga_id, "customer changed their mind")
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.CANCELLED and saga.steps == ()
    assert saga.error is not None and saga.error.message == "customer changed their mind"
    # A sweep (or the start message, arriving late) finds it finished and starts nothing.
    result = stack.cli("recover", "--older-than", "0", "--json")
    assert result.returncode == 0, result.stderr
    assert {"saga_id": saga_id} not in json.loads(result.stdout)["started"]
    stack.client.app.send_task(
        "sagaflow.start",
        kwargs={"saga_id": saga_id, "saga_type": "trip", "data": {"n": 2}},
        queue=stack.settings.queue,
    )
    barrier = stack.wait_one(stack.start("trip", {}))  # the late start was taken before it
    assert barrier.state is SagaState.COMPLETED
    assert stack.store.get(saga_id).state is SagaState.CANCELLED
    assert stack.executions(saga_id) == []
    assert events_of(stack, saga_id) == [HistoryEvent.SAGA_REQUESTED, HistoryEvent.SAGA_CANCELLED]
    assert [e.name for e in stack.store.events(saga_id)] == ["TripCancelled"]


def test_the_sweep_leaves_a_fresh_request_to_its_start_message(
    stack: Stack, broker_down_client: SagaClient
) -> None:
    saga_id = broker_down_client.start("trip", {}, saga_id=new_id("fresh"))
    orchestrator = orchestrator_of(create_orchestrator_app(stack.settings))
    report = orchestrator.recover(stalled_for=3600)
    assert saga_id not in report.started
    assert stack.store.get(saga_id).state is SagaState.REQUESTED
    assert saga_id in orchestrator.recover(stalled_for=0).started
    assert stack.wait_one(saga_id).state is SagaState.COMPLETED


def test_concurrent_sweeps_start_a_requested_saga_once(
    stack: Stack, broker_down_client: SagaClient
) -> None:
    saga_id = broker_down_client.start("trip", {}, saga_id=new_id("swept"))
    orchestrators = [orchestrator_of(create_orchestrator_app(stack.settings)) for _ in range(4)]
    barrier = threading.Barrier(len(orchestrators))
    reports: list[RecoveryReport] = []
    errors: list[BaseException] = []

    def sweep(orchestrator: Any) -> None:
        barrier.wait()
        try:
            reports.append(orchestrator.recover(stalled_for=0))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=sweep, args=(o,)) for o in orchestrators]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(reports) == len(orchestrators)
    assert [s for report in reports for s in report.started if s == saga_id] == [saga_id]
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.COMPLETED
    assert events_of(stack, saga_id).count(HistoryEvent.SAGA_RECORDED) == 1
    assert events_of(stack, saga_id).count(HistoryEvent.SAGA_STARTED) == 1
    # Every sweep counts everything older than its own start as stalled (stalled_for=0), so on
    # a loaded machine one may re-drive the step another sweep has just dispatched: that step
    # then runs once more, and the sweep says so.
    redriven = [step for r in reports for sid, step, _ in r.redriven if sid == saga_id]
    expected = Counter(TRIP_ONCE) + Counter((step, "action") for step in redriven)
    assert Counter(stack.executions(saga_id)) == expected


def test_a_requested_saga_of_an_unknown_type_is_rejected_by_the_sweep(
    stack: Stack, broker_down_client: SagaClient
) -> None:
    saga_id = broker_down_client.start("no_such_saga", {"x": 1}, saga_id=new_id("unknown"))
    report = orchestrator_of(create_orchestrator_app(stack.settings)).recover(stalled_for=0)
    assert saga_id not in report.started
    saga = stack.store.get(saga_id)
    assert saga.state is SagaState.REJECTED
    assert saga.error is not None and saga.error.type == "UnknownSagaType"
    assert saga.data == {"x": 1}
    assert events_of(stack, saga_id) == [HistoryEvent.SAGA_REQUESTED, HistoryEvent.SAGA_REJECTED]


# -- duplicates and fallbacks ------------------------------------------------------------------


def test_the_same_id_started_twice_is_one_saga(stack: Stack) -> None:
    saga_id = new_id("twice")
    assert stack.client.start("trip", {"n": 1}, saga_id=saga_id) == saga_id
    assert stack.client.start("trip", {"n": 1}, saga_id=saga_id) == saga_id
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.COMPLETED
    events = events_of(stack, saga_id)
    assert events.count(HistoryEvent.SAGA_REQUESTED) == 1
    assert events.count(HistoryEvent.SAGA_RECORDED) == 1
    assert events.count(HistoryEvent.SAGA_STARTED) == 1
    # A third start of the finished saga changes nothing; the sweep finds nothing to start.
    stack.client.start("trip", {"n": 1}, saga_id=saga_id)
    report = orchestrator_of(create_orchestrator_app(stack.settings)).recover(stalled_for=0)
    assert saga_id not in report.started
    assert stack.store.get(saga_id).version == saga.version
    assert stack.executions(saga_id) == TRIP_ONCE


def test_a_producer_without_the_store_starts_through_the_broker_alone(
    stack: Stack, tmp_path: Path
) -> None:
    outbox_path = tmp_path / "outbox.db"
    client = SagaClient(
        replace(stack.settings, database_url=UNREACHABLE_DATABASE, outbox_path=str(outbox_path)),
        durability="broker",
    )
    try:
        receipt = client.submit("trip", {}, saga_id=new_id("no-store"))
    finally:
        client.close()
        client.app.close()
    assert receipt.durability is Durability.BROKER
    assert not outbox_path.exists()  # asked for the broker alone: no local file
    saga = stack.wait_one(receipt.saga_id)
    assert saga.state is SagaState.COMPLETED
    # Recorded by the orchestrator when it took the message, as before durable starts.
    rows = stack.store.history(receipt.saga_id)
    assert (rows[0].event, rows[0].from_state, rows[0].to_state) == (
        HistoryEvent.SAGA_RECORDED,
        None,
        "started",
    )
    assert stack.executions(receipt.saga_id) == TRIP_ONCE


@pytest.mark.timeout(60)
def test_neither_store_nor_broker_raises_broker_unavailable(stack: Stack, tmp_path: Path) -> None:
    settings = replace(
        stack.settings,
        broker_url=UNREACHABLE_REDIS,
        database_url=UNREACHABLE_DATABASE,
        outbox_path=str(tmp_path / "outbox.db"),
    )
    client = SagaClient(settings)
    saga_id = new_id("nowhere")
    try:
        with pytest.raises(BrokerUnavailable, match=f"could not enqueue saga {saga_id}"):
            client.start("trip", {}, saga_id=saga_id, durability="broker")
        # Allowed the outbox (the default), the start is kept there and its id returned.
        kept = client.submit("trip", {"n": 1}, saga_id=saga_id)
        assert kept.durability is Durability.OUTBOX
        assert [r.saga_id for _, r in client.outbox.pending()] == [saga_id]
    finally:
        client.close()
        client.app.close()
    assert stack.store.load(saga_id) is None


# -- the store ---------------------------------------------------------------------------------


def test_promote_of_an_unknown_saga_changes_nothing(stack: Stack) -> None:
    def plan(_: Any) -> Any:
        raise AssertionError("nothing to plan")

    decision = stack.store.promote(new_id("absent"), plan)
    assert decision.saga is None and decision.outcome is None


def test_the_requested_lookup_uses_its_index_on_postgresql() -> None:
    since = datetime(2026, 1, 1, tzinfo=timezone.utc)
    (plan,) = query_plans(lambda store: store.requested(since))
    assert "ix_sagaflow_sagas_state_updated" in plan, plan


def test_a_start_right_after_the_database_dropped_the_producers_connection_is_recorded(
    stack: Stack,
) -> None:
    if not stack.settings.database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL drops the connection")
    store = open_store(stack.settings.database_url)
    # The broker is unreachable too: only the store can keep this start.
    client = SagaClient(replace(stack.settings, broker_url=UNREACHABLE_REDIS), store=store)
    try:
        client.start("trip", {"n": 1}, saga_id=new_id("warm"))  # the pool now holds a connection
        drop_pooled_connection(store, stack.store.engine)
        saga_id = client.start("trip", {"n": 2}, saga_id=new_id("dropped"))
        assert store.get(saga_id).state is SagaState.REQUESTED
    finally:
        client.app.close()
        store.dispose()


# -- the store does not answer: the outbox -------------------------------------------------------


@contextmanager
def store_outage(database_url: str) -> Iterator[None]:
    """PostgreSQL refuses every new connection to the database, as a server that is down or
    starting up does. Connections already open (the stack's workers') are left alone: only a
    producer that connects now sees the outage, and the workers need not reconnect after it."""
    name = sa.engine.make_url(database_url).database
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


@pytest.fixture
def unconsumed_queue() -> Iterator[str]:
    """An orchestrator queue no worker consumes: the start messages a producer sends there are
    the broker's copies, for the test to lose."""
    require_redis()
    name = new_id("nobody-consumes")
    yield name
    redis.Redis.from_url(REDIS_URL).delete(name)


def queued_starts(queue: str) -> list[str]:
    """The saga ids of the start messages waiting in `queue` (kombu's Redis list)."""
    ids = []
    for raw in redis.Redis.from_url(REDIS_URL).lrange(queue, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == "sagaflow.start"
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        ids.append(kwargs["saga_id"])
    return ids


def producer_env(stack: Stack, queue: str, outbox_path: Path) -> dict[str, str]:
    return {
        **stack.env,
        "SAGAFLOW_QUEUE": queue,
        "SAGAFLOW_OUTBOX_PATH": str(outbox_path),
        "NO_COLOR": "1",
    }


def requested_history(stack: Stack, saga_id: str) -> list[tuple[str, Any]]:
    return [(h.event, h.detail) for h in stack.store.history(saga_id)]


def sweep_starts(stack: Stack, saga_ids: list[str]) -> None:
    result = stack.cli("recover", "--older-than", "0", "--json")
    assert result.returncode == 0, result.stderr
    started = {entry["saga_id"] for entry in json.loads(result.stdout)["started"]}
    assert set(saga_ids) <= started, f"the sweep started {sorted(started)}, not all of {saga_ids}"


@POSTGRES_STACK
@pytest.mark.timeout(180)
def test_a_start_during_a_store_outage_survives_the_loss_of_its_message(
    stack: Stack, unconsumed_queue: str, tmp_path: Path
) -> None:
    outbox_path = tmp_path / "outbox.db"
    outbox = StartOutbox(outbox_path, stack.settings.database_url)
    saga_id = new_id("outage")
    with store_outage(stack.settings.database_url):
        asked_at = utcnow()
        # A producer process of its own, gone before the store comes back.
        start = ["start", "trip", "--data", '{"n": 3}', "--id", saga_id, "--deadline", "3600"]
        result = subprocess.run(
            [sys.executable, "-m", "sagaflow", *start],
            cwd=ROOT,
            env=producer_env(stack, unconsumed_queue, outbox_path),
            capture_output=True,
            text=True,
            timeout=90,
        )
        answered_at = utcnow()
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == saga_id  # the producer was given the id
        assert f"starts are kept in the outbox {outbox_path}" in result.stderr
        [(_, kept)] = outbox.pending()
        assert (kept.saga_id, kept.saga_type, kept.data, kept.deadline) == (
            saga_id,
            "trip",
            {"n": 3},
            3600,
        )
        assert asked_at <= kept.created_at <= answered_at
        # The broker had the start message too, and loses it.
        assert queued_starts(unconsumed_queue) == [saga_id]
        redis.Redis.from_url(REDIS_URL).delete(unconsumed_queue)
    # The store is back. Any call of a producer on this host drains the outbox, in the
    # background: here another process's, which nobody else would drain.
    client = SagaClient(
        replace(stack.settings, queue=unconsumed_queue, outbox_path=str(outbox_path))
    )
    try:
        client.list_sagas(limit=1)
        request = poll(
            lambda: stack.store.load(saga_id),
            30,
            lambda: f"saga {saga_id} not drained into the store; outbox: {outbox.pending()}",
        )
        poll(lambda: outbox.count() == 0, 30, lambda: f"outbox still holds {outbox.pending()}")
    finally:
        client.close()
        client.app.close()
    assert request.state is SagaState.REQUESTED and request.data == {"n": 3}
    assert request.created_at == kept.created_at  # when the producer was given the id
    assert request.deadline_at == kept.created_at + timedelta(seconds=3600)
    assert requested_history(stack, saga_id) == [(HistoryEvent.SAGA_REQUESTED, {"via": "outbox"})]
    # No start message is coming: the recovery sweep starts it from the store.
    sweep_starts(stack, [saga_id])
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.COMPLETED
    assert stack.executions(saga_id) == TRIP_ONCE
    assert saga.deadline_at == request.deadline_at
    recorded = [
        h.detail for h in stack.store.history(saga_id) if h.event == HistoryEvent.SAGA_RECORDED
    ]
    assert recorded == [{"by": "recovery"}]
    assert queued_starts(unconsumed_queue) == []


@POSTGRES_STACK
@pytest.mark.timeout(120)
def test_the_next_start_the_store_takes_drains_the_outbox_at_once(
    stack: Stack,
    unconsumed_queue: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The background drain waits ten minutes after a failed try: only the next start can
    # drain the outbox within this test.
    monkeypatch.setattr(OutboxDrainer, "first_delay", 600.0)
    monkeypatch.setattr(OutboxDrainer, "max_delay", 600.0)
    caplog.set_level("INFO", logger="sagaflow.client.outbox")
    client = SagaClient(
        replace(stack.settings, queue=unconsumed_queue, outbox_path=str(tmp_path / "outbox.db"))
    )
    first, second = new_id("kept"), new_id("next")
    try:
        with store_outage(stack.settings.database_url):
            assert client.submit("trip", {}, saga_id=first).durability is Durability.OUTBOX
            poll(
                lambda: "start outbox: not drained" in caplog.text,
                30,
                lambda: "the background drain never tried while the store was away",
            )
        assert client.submit("trip", {}, saga_id=second).durability is Durability.STORE
        poll(
            lambda: stack.store.load(first),
            20,
            lambda: f"{first} still only in the outbox: {client.outbox.pending()}",
        )
        poll(lambda: client.outbox.count() == 0, 30, lambda: "the drained start is still kept")
    finally:
        client.close()
        client.app.close()
    assert requested_history(stack, first) == [(HistoryEvent.SAGA_REQUESTED, {"via": "outbox"})]
    assert requested_history(stack, second) == [(HistoryEvent.SAGA_REQUESTED, None)]
    sweep_starts(stack, [first, second])
    assert [s.state for s in stack.wait([first, second])] == [SagaState.COMPLETED] * 2


FILL = """
import json, sys, threading
from sagaflow.client.saga_client import SagaClient
client = SagaClient()
prefix, threads, each = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
receipts = []
def run(thread):
    for i in range(each):
        receipts.append(client.submit("trip", {"i": i}, saga_id=f"{prefix}-{thread}-{i}"))
workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(json.dumps({r.saga_id: r.durability.value for r in receipts}))
"""

DRAIN = """
import json, os, sys, time
from dataclasses import asdict
from sagaflow.client.saga_client import SagaClient
client = SagaClient()
print("ready", flush=True)
go, deadline = sys.argv[1], time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.005)
print(json.dumps(asdict(client.drain_outbox())), flush=True)
client.close()
"""


def run_processes(
    script: str, argvs: list[list[str]], env: dict[str, str]
) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", script, *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]


@POSTGRES_STACK
@pytest.mark.timeout(240)
def test_processes_and_threads_share_one_outbox_and_two_drains_record_each_saga_once(
    stack: Stack, unconsumed_queue: str, tmp_path: Path
) -> None:
    outbox_path = tmp_path / "outbox.db"
    env = producer_env(stack, unconsumed_queue, outbox_path)
    prefix = new_id("shared")
    producers, threads, each = 2, 3, 6
    with store_outage(stack.settings.database_url):
        fills = run_processes(
            FILL, [[f"{prefix}-p{n}", str(threads), str(each)] for n in range(producers)], env
        )
        receipts: dict[str, str] = {}
        for fill in fills:
            out, err = fill.communicate(timeout=120)
            assert fill.returncode == 0, err
            receipts.update(json.loads(out.splitlines()[-1]))
    wanted = producers * threads * each
    assert len(receipts) == wanted and set(receipts.values()) == {"outbox"}
    outbox = StartOutbox(outbox_path, stack.settings.database_url)
    assert sorted(r.saga_id for _, r in outbox.pending(limit=1000)) == sorted(receipts)
    # The store is back: two processes drain the file at the same moment.
    go = tmp_path / "go"
    drains = run_processes(DRAIN, [[str(go)], [str(go)]], env)
    for process in drains:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    go.touch()
    reports = []
    for process in drains:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        reports.append(json.loads(out.splitlines()[-1]))
    assert all(report["refused"] == 0 for report in reports), reports
    assert outbox.count() == 0
    with stack.store.engine.connect() as conn:
        stored = conn.execute(
            sa.select(sagas.c.id, sagas.c.state).where(sagas.c.id.like(f"{prefix}-%"))
        ).all()
        requested_rows = conn.execute(
            sa.select(history.c.saga_id, sa.func.count())
            .where(
                history.c.saga_id.like(f"{prefix}-%"),
                history.c.event == HistoryEvent.SAGA_REQUESTED,
            )
            .group_by(history.c.saga_id)
        ).all()
    assert sorted(row.id for row in stored) == sorted(receipts)
    assert {row.state for row in stored} == {"requested"}
    assert dict(requested_rows) == {saga_id: 1 for saga_id in receipts}
    sweep_starts(stack, list(receipts))
    finished = stack.wait(list(receipts), timeout=180)
    assert {s.state for s in finished} == {SagaState.COMPLETED}
    assert all(stack.executions(saga_id) == TRIP_ONCE for saga_id in receipts)


DENIED_OUTBOX = """
import json, sys
from sagaflow import StoreUnavailable
from sagaflow.client.saga_client import SagaClient
client = SagaClient()
try:
    client.start("trip", {}, saga_id=sys.argv[1])
except StoreUnavailable as exc:
    print(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
else:
    print(json.dumps({"type": None}))
"""


@pytest.mark.timeout(90)
def test_start_raises_when_neither_the_store_nor_the_outbox_can_keep_it(tmp_path: Path) -> None:
    require_redis()
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    queue, saga_id = new_id("never-sent"), new_id("unkept")
    settings = Settings(
        home=tmp_path / "home",
        broker_url=REDIS_URL,
        database_url=UNREACHABLE_DATABASE,
        queue=queue,
        outbox_path=str(folder / "outbox.db"),
    )
    command = [sys.executable, "-c", DENIED_OUTBOX, saga_id]
    if os.geteuid() == 0:
        # Root writes into a read-only folder anyway, unless it gives up that capability.
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *command]
    try:
        result = subprocess.run(
            command,
            cwd=ROOT,
            env={**os.environ, **settings.to_env()},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        folder.chmod(0o755)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.splitlines()[-1])
    # A StoreUnavailable (caught above), what callers retry on and the CLI exits 4 for.
    assert outcome["type"] == "OutboxUnavailable", outcome
    assert f"saga {saga_id} not started" in outcome["message"]
    assert "127.0.0.1:1" in outcome["message"] and str(folder) in outcome["message"]
    assert list(folder.iterdir()) == []
    assert redis.Redis.from_url(REDIS_URL).llen(queue) == 0  # nothing was sent


def test_durability_store_refuses_a_start_the_store_cannot_take(
    tmp_path: Path, unconsumed_queue: str
) -> None:
    outbox_path = tmp_path / "outbox.db"
    settings = Settings(
        home=tmp_path,
        broker_url=REDIS_URL,
        database_url=UNREACHABLE_DATABASE,
        queue=unconsumed_queue,
        outbox_path=str(outbox_path),
    )
    client = SagaClient(settings, durability="store")
    saga_id = new_id("store-only")
    try:
        with pytest.raises(StoreUnavailable, match=f"saga {saga_id} not started") as caught:
            client.start("trip", {}, saga_id=saga_id)
        assert not isinstance(caught.value, OutboxUnavailable)
        assert not outbox_path.exists()
        assert queued_starts(unconsumed_queue) == []  # nothing was sent
        # One call may allow what the client's default does not.
        allowed = client.submit("trip", {}, durability="outbox")
        assert allowed.durability is Durability.OUTBOX
    finally:
        client.close()
        client.app.close()
    kept = StartOutbox(outbox_path, UNREACHABLE_DATABASE).pending()
    assert [request.saga_id for _, request in kept] == [allowed.saga_id]
    assert queued_starts(unconsumed_queue) == [allowed.saga_id]


def test_an_outbox_file_of_another_schema_version_is_refused_not_rewritten(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.db"
    request = StartRequest("versioned", "trip", {"n": 1}, None, utcnow())
    outbox = StartOutbox(path, UNREACHABLE_DATABASE)
    assert outbox.put(request) is True
    assert outbox.put(replace(request, data={"n": 2})) is False  # the first one stays
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute("PRAGMA user_version = 2")
    with pytest.raises(
        OutboxUnavailable, match="has schema version 2; this sagaflow reads version 1"
    ):
        outbox.pending()
    client = SagaClient(
        Settings(
            home=tmp_path,
            broker_url=UNREACHABLE_REDIS,
            database_url=UNREACHABLE_DATABASE,
            outbox_path=str(path),
        )
    )
    with pytest.raises(OutboxUnavailable, match="schema version 2"):
        client.start("trip", {}, saga_id="refused")
    client.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        rows = conn.execute("SELECT saga_id, data FROM pending_starts").fetchall()
    assert rows == [("versioned", '{"n":1}')]


@POSTGRES_STACK
@pytest.mark.timeout(120)
def test_the_background_drain_records_the_start_once_the_store_answers(
    stack: Stack, unconsumed_queue: str, tmp_path: Path
) -> None:
    client = SagaClient(
        replace(stack.settings, queue=unconsumed_queue, outbox_path=str(tmp_path / "outbox.db"))
    )
    saga_id = new_id("background")
    try:
        with store_outage(stack.settings.database_url):
            assert client.submit("trip", {}, saga_id=saga_id).durability is Durability.OUTBOX
        # No further call: the drain's own retries find the store back.
        poll(
            lambda: stack.store.load(saga_id),
            30,
            lambda: f"{saga_id} still only in the outbox: {client.outbox.pending()}",
        )
        poll(
            lambda: not any(t.name == "sagaflow-outbox-drain" for t in threading.enumerate()),
            30,
            lambda: "the drain thread went on with nothing left to drain",
        )
        assert client.outbox.count() == 0
    finally:
        client.close()
        client.app.close()
    sweep_starts(stack, [saga_id])
    assert stack.wait_one(saga_id).state is SagaState.COMPLETED
