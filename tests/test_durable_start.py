"""Durable starts: SagaClient.start records the saga as `requested` before sending its start, so a
start message lost with the broker is started by the recovery sweep instead of vanishing."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from sagaflow import SagaState
from sagaflow.client import BrokerUnavailable, SagaClient
from sagaflow.orchestrator import RecoveryReport, create_orchestrator_app
from sagaflow.store import SagaStore
from tests.conftest import Stack, drop_pooled_connection, query_plans

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
UNREACHABLE_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:1/sagaflow"
TRIP_ONCE = [("a1", "action"), ("b2", "action"), ("a3", "action"), ("b4", "action")]


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
    assert [h.event for h in rows[:3]] == ["saga_requested", "saga_recorded", "saga_started"]
    assert [(h.from_state, h.to_state) for h in rows[:2]] == [
        (None, "requested"),
        ("requested", "started"),
    ]
    assert rows[1].detail is None  # started by its start message, not by the sweep
    assert saga.created_at == recorded.created_at
    assert stack.executions(saga_id) == TRIP_ONCE


# -- a lost start message ----------------------------------------------------------------------


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
    recorded = [h for h in stack.store.history(saga_id) if h.event == "saga_recorded"]
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
    assert events_of(stack, saga_id) == ["saga_requested", "saga_cancelled"]
    assert [e.name for e in stack.store.events(saga_id)] == ["TripCancelled"]


def test_the_sweep_leaves_a_fresh_request_to_its_start_message(
    stack: Stack, broker_down_client: SagaClient
) -> None:
    saga_id = broker_down_client.start("trip", {}, saga_id=new_id("fresh"))
    orchestrator = create_orchestrator_app(stack.settings).sagaflow_orchestrator
    report = orchestrator.recover(stalled_for=3600)
    assert saga_id not in report.started
    assert stack.store.get(saga_id).state is SagaState.REQUESTED
    assert saga_id in orchestrator.recover(stalled_for=0).started
    assert stack.wait_one(saga_id).state is SagaState.COMPLETED


def test_concurrent_sweeps_start_a_requested_saga_once(
    stack: Stack, broker_down_client: SagaClient
) -> None:
    saga_id = broker_down_client.start("trip", {}, saga_id=new_id("swept"))
    orchestrators = [
        create_orchestrator_app(stack.settings).sagaflow_orchestrator for _ in range(4)
    ]
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
    assert events_of(stack, saga_id).count("saga_recorded") == 1
    assert events_of(stack, saga_id).count("saga_started") == 1
    assert stack.executions(saga_id) == TRIP_ONCE


def test_a_requested_saga_of_an_unknown_type_is_rejected_by_the_sweep(
    stack: Stack, broker_down_client: SagaClient
) -> None:
    saga_id = broker_down_client.start("no_such_saga", {"x": 1}, saga_id=new_id("unknown"))
    report = create_orchestrator_app(stack.settings).sagaflow_orchestrator.recover(stalled_for=0)
    assert saga_id not in report.started
    saga = stack.store.get(saga_id)
    assert saga.state is SagaState.REJECTED
    assert saga.error is not None and saga.error.type == "UnknownSagaType"
    assert saga.data == {"x": 1}
    assert events_of(stack, saga_id) == ["saga_requested", "saga_rejected"]


# -- duplicates and fallbacks ------------------------------------------------------------------


def test_the_same_id_started_twice_is_one_saga(stack: Stack) -> None:
    saga_id = new_id("twice")
    assert stack.client.start("trip", {"n": 1}, saga_id=saga_id) == saga_id
    assert stack.client.start("trip", {"n": 1}, saga_id=saga_id) == saga_id
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.COMPLETED
    events = events_of(stack, saga_id)
    assert events.count("saga_requested") == 1
    assert events.count("saga_recorded") == 1
    assert events.count("saga_started") == 1
    # A third start of the finished saga changes nothing; the sweep finds nothing to start.
    stack.client.start("trip", {"n": 1}, saga_id=saga_id)
    report = create_orchestrator_app(stack.settings).sagaflow_orchestrator.recover(stalled_for=0)
    assert saga_id not in report.started
    assert stack.store.get(saga_id).version == saga.version
    assert stack.executions(saga_id) == TRIP_ONCE


def test_a_producer_without_the_store_starts_through_the_broker_alone(stack: Stack) -> None:
    client = SagaClient(replace(stack.settings, database_url=UNREACHABLE_DATABASE))
    try:
        saga_id = client.start("trip", {}, saga_id=new_id("no-store"))
    finally:
        client.close()
        client.app.close()
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.COMPLETED
    # Recorded by the orchestrator when it took the message, as before durable starts.
    rows = stack.store.history(saga_id)
    assert (rows[0].event, rows[0].from_state, rows[0].to_state) == (
        "saga_recorded",
        None,
        "started",
    )
    assert stack.executions(saga_id) == TRIP_ONCE


@pytest.mark.timeout(60)
def test_neither_store_nor_broker_raises_broker_unavailable(stack: Stack) -> None:
    settings = replace(
        stack.settings, broker_url=UNREACHABLE_REDIS, database_url=UNREACHABLE_DATABASE
    )
    client = SagaClient(settings)
    saga_id = new_id("nowhere")
    try:
        with pytest.raises(BrokerUnavailable, match=f"could not enqueue saga {saga_id}"):
            client.start("trip", {}, saga_id=saga_id)
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
    store = SagaStore(stack.settings.database_url)
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
