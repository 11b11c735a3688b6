"""A saga deadline: a saga still running forward by then is stopped, compensated and fails."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from sagaflow import (
    DefinitionError,
    InvalidSagaInput,
    Registry,
    Saga,
    SagaState,
    Step,
    StepStatus,
)
from sagaflow.core.definitions import Phase, SagaOrchestrator
from sagaflow.core.machine import (
    DispatchTask,
    ErrorInfo,
    Ignored,
    PublishEvent,
    SagaRecord,
    StepFailed,
    StepSucceeded,
    Transition,
    apply,
    begin,
    cancel,
    new_saga,
    pass_deadline,
)
from sagaflow.core.vocabulary import ErrorType, HistoryEvent
from sagaflow.devstack.processes import WorkerSpec
from sagaflow.messaging.orchestrator_app import create_orchestrator_app, orchestrator_of
from tests.conftest import Stack, poll
from tests.integration.test_pivot import sweep_until

ON_EVERY_BROKER = True  # its stack tests run on Redis, RabbitMQ and the embedded broker

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
STEPS = [Step(n, "svc.act", "svc.undo", queue="q") for n in ("one", "two", "three")]


def running(steps: list[Step] = STEPS, deadline: float | None = 60) -> SagaRecord:
    saga = begin(new_saga("s", "trip", {}, steps, T0, deadline), T0).saga
    done = apply(saga, StepSucceeded(0, Phase.ACTION, 1, {"one": 1}, "s.0.action.1"), T0)
    assert isinstance(done, Transition)
    return done.saga  # two is in flight


def test_deadlines_are_checked_when_defined() -> None:
    assert Saga("s", STEPS, deadline=5).deadline == 5
    for bad in (0, -1, True, "5", float("nan")):
        with pytest.raises(DefinitionError, match="positive number of seconds"):
            Saga("s", STEPS, deadline=bad)  # type: ignore[arg-type]

    class Slow(SagaOrchestrator):
        saga_type = "slow"
        deadline = 30

        def define_steps(self, data: Mapping[str, Any]) -> list[Step]:
            return STEPS

    class Bad(Slow):
        saga_type = "bad"
        deadline = -3

    registry = Registry([Slow, Saga("plain", STEPS)])
    assert registry.deadline("slow") == 30 and registry.deadline("plain") is None
    with pytest.raises(DefinitionError, match="'bad': deadline must be a positive number"):
        registry.register(Bad)


def test_the_deadline_is_recorded_from_the_start() -> None:
    assert running().deadline_at == T0 + timedelta(seconds=60)
    assert running(deadline=None).deadline_at is None


def test_past_its_deadline_a_saga_waits_for_its_step_then_compensates_and_fails() -> None:
    saga = running()
    assert isinstance(pass_deadline(saga, T0 + timedelta(seconds=59)), Ignored)
    stopping = pass_deadline(saga, T0 + timedelta(seconds=61))
    assert isinstance(stopping, Transition)
    assert stopping.commands == () and stopping.saga.state is SagaState.PENDING
    assert stopping.history[0].event == HistoryEvent.DEADLINE_EXCEEDED
    assert isinstance(pass_deadline(stopping.saga, T0 + timedelta(seconds=62)), Ignored)
    done = apply(stopping.saga, StepSucceeded(1, Phase.ACTION, 1, {}, "s.1.action.1"), T0)
    assert isinstance(done, Transition)
    (command,) = done.commands
    assert isinstance(command, DispatchTask) and command.phase is Phase.COMPENSATION
    saga = done.saga
    for position in (1, 0):
        task_id = f"s.{position}.compensation.1"
        undone = apply(saga, StepSucceeded(position, Phase.COMPENSATION, 1, None, task_id), T0)
        assert isinstance(undone, Transition)
        saga = undone.saga
    assert saga.state is SagaState.FAILED
    assert saga.error is not None and saga.error.type == ErrorType.DEADLINE_EXCEEDED
    (event,) = undone.commands
    assert isinstance(event, PublishEvent) and event.name == "TripFailed"


def test_a_step_failing_after_the_deadline_keeps_the_deadline_as_the_error() -> None:
    stopping = pass_deadline(running(), T0 + timedelta(seconds=61))
    assert isinstance(stopping, Transition)
    error = ErrorInfo("Boom", "boom", task_id="s.1.action.1")
    failed = apply(stopping.saga, StepFailed(1, Phase.ACTION, 1, error), T0)
    assert isinstance(failed, Transition)
    assert failed.saga.error is not None and failed.saga.error.type == ErrorType.DEADLINE_EXCEEDED
    assert failed.saga.steps[1].error == error


def test_a_saga_past_its_pivot_drops_its_deadline_and_goes_on() -> None:
    steps = [STEPS[0], Step("p", "svc.act", pivot=True), Step("r", "svc.act", retriable=True)]
    saga = running(steps)  # the pivot is in flight
    outcome = pass_deadline(saga, T0 + timedelta(seconds=61))
    assert isinstance(outcome, Transition)
    assert outcome.saga.deadline_at is None and outcome.saga.cancel_requested_at is None
    assert outcome.history[0].event == HistoryEvent.DEADLINE_DROPPED
    assert "pivot step 'p' is in flight" in str(outcome.history[0].detail)


def test_a_cancelled_or_finished_saga_is_left_to_its_course() -> None:
    requested = cancel(running(), "stop", T0)
    assert isinstance(requested, Transition)
    assert isinstance(pass_deadline(requested.saga, T0 + timedelta(seconds=61)), Ignored)


def test_the_client_refuses_a_bad_deadline_before_sending() -> None:
    from sagaflow.client.saga_client import SagaClient
    from sagaflow.config import Settings

    client = SagaClient(Settings(broker_url="redis://127.0.0.1:1/0", database_url="sqlite://"))
    with pytest.raises(InvalidSagaInput, match="deadline must be a positive number"):
        client.start("trip", {}, deadline=-1)


# -- real processes --------------------------------------------------------------------------------


def test_the_definitions_deadline_stops_the_saga_and_its_step_follows_its_timeout(
    stack: Stack,
) -> None:
    saga_id = stack.start("hurried", {})
    stack.wait_dispatched(saga_id, 1)  # only this test's sweeps apply the deadline
    saga = sweep_until(stack, saga_id, SagaState.FAILED)
    assert saga.error is not None and saga.error.type == ErrorType.DEADLINE_EXCEEDED
    assert saga.steps[1].error is not None and saga.steps[1].error.type == ErrorType.STEP_TIMEOUT
    assert stack.executions(saga_id) == [
        ("a1", "action"),
        ("b2", "compensation"),
        ("a1", "compensation"),
    ]
    assert [e.name for e in stack.store.events(saga_id)] == ["HurriedFailed"]
    events = [h.event for h in stack.store.history(saga_id)]
    assert events.index("deadline_exceeded") < events.index(HistoryEvent.COMPENSATION_STARTED)


def test_a_deadline_given_at_start_waits_for_the_step_in_flight(stack: Stack) -> None:
    started = stack.cli("start", "detour", "--deadline", "0.2")
    assert started.returncode == 0, started.stderr
    saga_id = started.stdout.strip()
    stack.wait_dispatched(saga_id, 1)  # l2 waits on a queue nobody consumes yet
    orchestrator = orchestrator_of(create_orchestrator_app(stack.settings))
    poll(
        lambda: orchestrator.recover(stalled_for=3600).deadline_exceeded,
        30,
        lambda: f"deadline of {saga_id} never noticed{stack.logs_hint()}",
        interval=0.1,
    )
    later = stack.start_worker(WorkerSpec("later", "tests.services", ["later"]))
    try:
        saga = stack.wait_one(saga_id)
    finally:
        stack.group.stop_worker(later)
    assert saga.state is SagaState.FAILED
    assert saga.error is not None and "deadline exceeded" in saga.error.message
    assert stack.executions(saga_id) == [
        ("a1", "action"),
        ("l2", "action"),
        ("l2", "compensation"),
        ("a1", "compensation"),
    ]


def test_a_saga_past_its_pivot_finishes_after_its_deadline(stack: Stack) -> None:
    saga_id = stack.client.start("pivoting", {"fail_times": {"r3": 1}}, deadline=0.2)
    poll(
        lambda: (
            (saga := stack.store.load(saga_id)) is not None
            and len(saga.steps) > 2
            and saga.steps[2].status is StepStatus.WAITING_RETRY
        ),
        30,
        lambda: f"r3 of {saga_id} never failed once{stack.logs_hint()}",
    )
    saga = sweep_until(stack, saga_id, SagaState.COMPLETED)
    assert saga.deadline_at is None
    dropped = [h for h in stack.store.history(saga_id) if h.event == HistoryEvent.DEADLINE_DROPPED]
    assert dropped and "it can only go forward" in str(dropped[0].detail)


# -- the sweep's lookups use their indexes -------------------------------------------------------


def test_the_sweeps_lookups_use_their_indexes_on_postgresql() -> None:
    from tests.conftest import query_plans

    def lookups(store: Any) -> None:
        store.overdue(T0)
        store.timed_out(T0)

    plans = query_plans(lookups)
    assert len(plans) == 2
    assert "ix_sagaflow_sagas_deadline" in plans[0], plans[0]
    assert "ix_sagaflow_steps_deadline" in plans[1], plans[1]
