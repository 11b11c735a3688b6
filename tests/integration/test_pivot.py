"""Pivot and retriable steps: past the pivot a saga only goes forward."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from sagaflow import SagaState, Step, StepStatus
from sagaflow.client.saga_client import InvalidOperation
from sagaflow.core.definitions import Phase
from sagaflow.core.machine import (
    RETRY_BACKOFF_MAX,
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
    on_timer,
    resolve,
    retry_delay,
)
from sagaflow.core.transitions import RETRY_BACKOFF
from sagaflow.core.vocabulary import ErrorType, HistoryEvent
from sagaflow.messaging.orchestrator_app import create_orchestrator_app, orchestrator_of
from tests.conftest import Stack, poll

ON_EVERY_BROKER = True  # its stack tests run on Redis, RabbitMQ and the embedded broker

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
STEPS = [
    Step("reserve", "svc.act", "svc.undo", queue="q"),
    Step("charge", "svc.act", queue="q", pivot=True),
    Step("ship", "svc.act", queue="q", retriable=True),
    Step("notify", "svc.act", queue="q", retriable=True),
]
BOOM = ErrorInfo("Boom", "boom")


def ok(saga: SagaRecord, position: int, result: object = None) -> Transition:
    step = saga.steps[position]
    outcome = apply(
        saga, StepSucceeded(position, Phase.ACTION, step.attempts, result, step.task_id), T0
    )
    assert isinstance(outcome, Transition), outcome
    return outcome


def failed(saga: SagaRecord, position: int, error: ErrorInfo = BOOM) -> Transition:
    step = saga.steps[position]
    event = StepFailed(position, Phase.ACTION, step.attempts, replace(error, task_id=step.task_id))
    outcome = apply(saga, event, T0)
    assert isinstance(outcome, Transition), outcome
    return outcome


def running(until: int, steps: list[Step] = STEPS) -> SagaRecord:
    """Steps before `until` succeeded; step `until` is executing."""
    saga = begin(new_saga("s", "order", {}, steps, T0), T0).saga
    for position in range(until):
        saga = ok(saga, position, {"n": position}).saga
    return saga


def dispatched(t: Transition) -> DispatchTask:
    (command,) = t.commands
    assert isinstance(command, DispatchTask)
    return command


def test_a_failed_pivot_compensates_the_steps_before_it() -> None:
    outcome = failed(running(1), 1)
    assert outcome.saga.state is SagaState.COMPENSATING
    command = dispatched(outcome)
    assert command.phase is Phase.COMPENSATION and command.position == 0


def test_past_the_pivot_a_failed_retriable_step_waits_then_goes_again() -> None:
    passed = ok(running(1), 1)
    assert passed.history[0].detail == {"pivot": True}
    waiting = failed(passed.saga, 2)
    assert waiting.commands == ()  # nothing compensated, nothing sent yet
    step = waiting.saga.steps[2]
    assert waiting.saga.state is SagaState.PENDING
    assert step.status is StepStatus.WAITING_RETRY
    assert step.deadline_at == T0 + timedelta(seconds=retry_delay(1))
    assert [h.event for h in waiting.history] == [
        HistoryEvent.STEP_FAILED,
        HistoryEvent.STEP_RETRY_SCHEDULED,
    ]
    assert isinstance(on_timer(waiting.saga, 2, T0), Ignored)  # not due yet
    again = on_timer(waiting.saga, 2, step.deadline_at + timedelta(milliseconds=1))
    assert isinstance(again, Transition)
    command = dispatched(again)
    assert command.attempt == 2 and command.task_id == "s.2.action.2"
    first = dispatched(ok(running(1), 1))
    assert command.context["idempotency_key"] == first.context["idempotency_key"]
    assert again.saga.steps[2].status is StepStatus.EXECUTING
    assert again.saga.steps[2].error is None
    done = ok(ok(again.saga, 2).saga, 3)
    assert done.saga.state is SagaState.COMPLETED


def test_a_late_outcome_of_an_attempt_waiting_for_retry_is_ignored() -> None:
    waiting = failed(ok(running(1), 1).saga, 2).saga
    late = StepSucceeded(2, Phase.ACTION, 1, {}, "s.2.action.1")
    assert isinstance(apply(waiting, late, T0), Ignored)


def test_the_retry_delay_doubles_and_is_bounded() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert retry_delay(50) == retry_delay(10_000) == RETRY_BACKOFF_MAX
    assert retry_delay(1) == RETRY_BACKOFF and retry_delay(0) == RETRY_BACKOFF
    # Doubling from RETRY_BACKOFF until the next doubling would pass the cap, then the cap.
    delays = [retry_delay(n) for n in range(1, 40)]
    capped = delays.index(RETRY_BACKOFF_MAX)
    assert capped > 0
    assert delays[:capped] == [RETRY_BACKOFF * 2**n for n in range(capped)]
    assert delays[capped - 1] < RETRY_BACKOFF_MAX <= 2 * delays[capped - 1]
    assert set(delays[capped:]) == {RETRY_BACKOFF_MAX}


def test_a_non_retryable_failure_of_a_retriable_step_escalates() -> None:
    past = ok(running(1), 1).saga
    hopeless = failed(past, 2, ErrorInfo("Gone", "never", non_retryable=True))
    assert hopeless.saga.state is SagaState.ESCALATED
    assert hopeless.saga.state.is_terminal
    assert hopeless.saga.current_step == 2
    assert hopeless.saga.steps[2].status is StepStatus.FAILED
    assert hopeless.history[-1].event == HistoryEvent.SAGA_ESCALATED
    (event,) = hopeless.commands
    assert isinstance(event, PublishEvent) and event.name == "OrderEscalated"


def test_resolving_a_hopeless_retriable_step() -> None:
    past = ok(running(1), 1).saga
    hopeless = failed(past, 2, ErrorInfo("Gone", "never", non_retryable=True)).saga
    refused = cancel(hopeless, "stop", T0)
    assert isinstance(refused, Ignored) and "resolve step 'ship' first" in refused.reason
    again = resolve(hopeless, "ship", False, "fixed the address", T0)
    assert isinstance(again, Transition)
    assert again.saga.state is SagaState.PENDING
    assert dispatched(again).task_id == "s.2.action.2"  # sent again, never compensated
    by_hand = resolve(hopeless, "ship", True, "shipped by hand", T0, {"parcel": "p-1"})
    assert isinstance(by_hand, Transition)
    assert by_hand.saga.steps[2].status is StepStatus.COMPLETED
    assert dispatched(by_hand).position == 3


def test_a_timed_out_retriable_step_is_retried_not_compensated() -> None:
    steps = [*STEPS[:2], Step("ship", "svc.act", retriable=True, timeout=5)]
    saga = ok(running(1, steps), 1).saga
    expired = on_timer(saga, 2, T0 + timedelta(seconds=6))
    assert isinstance(expired, Transition)
    assert expired.saga.steps[2].status is StepStatus.WAITING_RETRY
    assert expired.saga.steps[2].error is not None
    assert expired.saga.steps[2].error.type == ErrorType.STEP_TIMEOUT


def test_cancel_is_refused_once_the_pivot_is_in_flight_or_passed() -> None:
    in_flight = cancel(running(1), "stop", T0)
    assert isinstance(in_flight, Ignored) and "pivot step 'charge' is in flight" in in_flight.reason
    passed = cancel(ok(running(1), 1).saga, "stop", T0)
    assert isinstance(passed, Ignored)
    assert passed.reason == "past its pivot step 'charge': it can only go forward"
    before = cancel(running(0), "stop", T0)
    assert isinstance(before, Transition)


def test_without_a_pivot_cancel_is_refused_once_a_retriable_step_started() -> None:
    steps = [Step("a", "svc.act", "svc.undo"), Step("r", "svc.act", retriable=True)]
    refused = cancel(running(1, steps), "stop", T0)
    assert isinstance(refused, Ignored)
    assert refused.reason == "its retriable step 'r' has started: it can only go forward"


# -- real processes --------------------------------------------------------------------------------


def sweep_until(stack: Stack, saga_id: str, done: SagaState, timeout: float = 60) -> SagaRecord:
    """Run the recovery sweep (what beat sends) until the saga reaches `done`."""
    orchestrator = orchestrator_of(create_orchestrator_app(stack.settings))
    return wait_for_state(
        stack, saga_id, done, timeout, before=lambda: orchestrator.recover(stalled_for=3600)
    )


def wait_for_state(
    stack: Stack,
    saga_id: str,
    done: SagaState,
    timeout: float = 60,
    before: Callable[[], object] = lambda: None,
) -> SagaRecord:
    """Poll until the saga reaches `done`, calling `before` ahead of each look."""

    def reached() -> SagaRecord | None:
        before()
        saga = stack.store.load(saga_id)
        return saga if saga is not None and saga.state is done else None

    def where() -> str:
        saga = stack.store.load(saga_id)
        if saga is None:
            return f"saga {saga_id} not recorded{stack.logs_hint()}"
        steps = ", ".join(f"{s.name}={s.status.value}" for s in saga.steps)
        return f"saga {saga_id} is {saga.state.value} [{steps}]{stack.logs_hint()}"

    result: SagaRecord = poll(reached, timeout, where, interval=0.2)
    return result


def test_a_retriable_step_is_retried_until_it_succeeds(stack: Stack) -> None:
    saga_id = stack.start("pivoting", {"fail_times": {"r3": 2}})
    saga = sweep_until(stack, saga_id, SagaState.COMPLETED)
    assert saga.steps[2].attempts == 3
    assert stack.executions(saga_id) == [
        ("a1", "action"),
        ("p2", "action"),
        ("r3", "action"),
        ("r3", "action"),
        ("r3", "action"),
    ]
    events = [h.event for h in stack.store.history(saga_id)]
    assert (
        events.count(HistoryEvent.STEP_RETRY_SCHEDULED) == 2
        and events.count(HistoryEvent.STEP_RETRIED) == 2
    )
    with pytest.raises(InvalidOperation, match="nothing to cancel"):
        stack.client.cancel(saga_id)


def test_a_failed_pivot_compensates_and_a_hopeless_retriable_step_escalates(
    stack: Stack,
) -> None:
    pivot_fails = stack.start("pivoting", {"fail_at": ["p2"]})
    hopeless = stack.start("pivoting", {"refuse_for_good_at": ["r3"]})
    failed_saga, escalated = stack.wait([pivot_fails, hopeless])
    assert failed_saga.state is SagaState.FAILED
    assert stack.executions(pivot_fails) == [
        ("a1", "action"),
        ("p2", "action"),
        ("a1", "compensation"),
    ]
    assert escalated.state is SagaState.ESCALATED
    assert escalated.error is not None and escalated.error.non_retryable
    assert escalated.steps[2].status is StepStatus.FAILED
    assert ("a1", "compensation") not in stack.executions(hopeless)
    assert [e.name for e in stack.store.events(hopeless)] == ["PivotingEscalated"]


def test_cancel_past_the_pivot_is_refused_with_the_reason(stack: Stack) -> None:
    saga_id = stack.start("pivoting", {"fail_times": {"r3": 1}})
    poll(
        lambda: (
            (saga := stack.store.load(saga_id)) is not None
            and len(saga.steps) > 2
            and saga.steps[2].status is StepStatus.WAITING_RETRY
        ),
        30,
        lambda: f"r3 of {saga_id} never failed once{stack.logs_hint()}",
    )
    with pytest.raises(InvalidOperation, match="past its pivot step 'p2': it can only go forward"):
        stack.client.cancel(saga_id, "too late")
    assert sweep_until(stack, saga_id, SagaState.COMPLETED).error is None
