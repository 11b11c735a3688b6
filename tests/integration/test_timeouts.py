"""Step timeouts: an action with no outcome in time fails; its policy says whether it is undone."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from sagaflow import DefinitionError, SagaState, Step, StepStatus
from sagaflow.core.definitions import Phase
from sagaflow.core.machine import (
    DispatchTask,
    Ignored,
    StepSucceeded,
    Transition,
    apply,
    begin,
    new_saga,
    time_out,
)
from sagaflow.core.vocabulary import ErrorType
from sagaflow.messaging.orchestrator_app import create_orchestrator_app, orchestrator_of
from tests.conftest import Stack, poll

ON_EVERY_BROKER = True  # its stack tests run on Redis, RabbitMQ and the embedded broker

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_timeout_policies_are_checked_when_defined() -> None:
    assert Step("s", "a", "c", timeout=5).on_timeout == "compensate"
    assert Step("s", "a", timeout=5).on_timeout == "fail"
    with pytest.raises(DefinitionError, match="positive"):
        Step("s", "a", timeout=0)
    with pytest.raises(DefinitionError, match="needs a compensation"):
        Step("s", "a", timeout=5, on_timeout="compensate")
    with pytest.raises(DefinitionError, match="one of"):
        Step("s", "a", "c", timeout=5, on_timeout="pray")


def started() -> Transition:
    steps = [Step("one", "a", "c"), Step("two", "a", "c", timeout=10)]
    saga = begin(new_saga("s", "t", {}, steps, T0), T0).saga
    done = apply(saga, StepSucceeded(0, Phase.ACTION, 1, {}, "s.0.action.1"), T0)
    assert isinstance(done, Transition)
    return done


def test_the_deadline_is_set_at_dispatch_and_respected() -> None:
    saga = started().saga
    assert saga.steps[1].deadline_at == T0 + timedelta(seconds=10)
    assert isinstance(time_out(saga, 1, T0 + timedelta(seconds=9)), Ignored)
    expired = time_out(saga, 1, T0 + timedelta(seconds=11))
    assert isinstance(expired, Transition)
    assert expired.saga.state is SagaState.COMPENSATING
    assert expired.saga.error is not None and expired.saga.error.type == ErrorType.STEP_TIMEOUT
    (command,) = expired.commands  # "compensate": the step itself is undone first
    assert isinstance(command, DispatchTask) and command.position == 1
    late = apply(expired.saga, StepSucceeded(1, Phase.ACTION, 1, {}, "s.1.action.1"), T0)
    assert isinstance(late, Ignored)


def sweep_until_timed_out(stack: Stack, saga_id: str) -> None:
    orchestrator = orchestrator_of(create_orchestrator_app(stack.settings))

    def timed_out() -> bool:
        report = orchestrator.recover(stalled_for=3600)
        return any(s == saga_id for s, _step in report.timed_out) or (
            stack.store.get(saga_id).steps[1].status is not StepStatus.EXECUTING
        )

    poll(timed_out, 30, lambda: f"step of {saga_id} never timed out", interval=0.1)


def test_a_step_that_times_out_is_compensated_with_the_steps_before_it(stack: Stack) -> None:
    saga_id = stack.start("timing_out", {})
    stack.wait_dispatched(saga_id, 1)
    sweep_until_timed_out(stack, saga_id)
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.FAILED
    assert saga.error is not None and saga.error.type == ErrorType.STEP_TIMEOUT
    assert [s.status for s in saga.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATED,
        StepStatus.SKIPPED,
    ]
    # The slow action never ran (nobody consumes its queue); its compensation did, first.
    assert stack.executions(saga_id) == [
        ("a1", "action"),
        ("slow", "compensation"),
        ("a1", "compensation"),
    ]


def test_on_timeout_fail_takes_the_step_as_not_done(stack: Stack) -> None:
    saga_id = stack.start("timing_out_fail", {})
    stack.wait_dispatched(saga_id, 1)
    sweep_until_timed_out(stack, saga_id)
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.FAILED
    assert saga.steps[1].status is StepStatus.FAILED
    assert stack.executions(saga_id) == [("a1", "action"), ("a1", "compensation")]


def test_the_periodic_recover_task_applies_timeouts_in_the_orchestrator(stack: Stack) -> None:
    """What `celery beat` sends: sagaflow.recover, run by the orchestrator worker."""
    from sagaflow.core.protocol import RECOVER_TASK

    saga_id = stack.start("timing_out_fail", {})
    stack.wait_dispatched(saga_id, 1)

    def swept() -> bool:
        stack.client.app.send_task(RECOVER_TASK, queue=stack.settings.queue)
        return stack.store.get(saga_id).state.is_terminal

    poll(swept, 30, lambda: f"saga {saga_id} still waiting{stack.logs_hint()}", interval=0.3)
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.FAILED and saga.error is not None
    assert saga.error.type == ErrorType.STEP_TIMEOUT


def test_redriving_a_step_keeps_its_deadline() -> None:
    from sagaflow.core.machine import redrive

    saga = started().saga  # two: timeout 10 s, deadline T0 + 10 s
    resent = redrive(saga, T0 + timedelta(seconds=5), T0 + timedelta(seconds=6))
    assert isinstance(resent, Transition)
    assert resent.saga.steps[1].attempts == 2
    assert resent.saga.steps[1].deadline_at == T0 + timedelta(seconds=10)


def test_on_timeout_fail_never_compensates_the_step_itself() -> None:
    steps = [
        Step("one", "a", "c"),
        Step("two", "a", "c", timeout=10, on_timeout="fail", compensate_on_failure=True),
    ]
    saga = begin(new_saga("s", "t", {}, steps, T0), T0).saga
    done = apply(saga, StepSucceeded(0, Phase.ACTION, 1, {}, "s.0.action.1"), T0)
    assert isinstance(done, Transition)
    expired = time_out(done.saga, 1, T0 + timedelta(seconds=11))
    assert isinstance(expired, Transition)
    (command,) = expired.commands
    assert isinstance(command, DispatchTask) and command.position == 0  # only one is undone


def test_a_cancelled_saga_whose_step_went_silent_is_compensated_not_resent() -> None:
    from sagaflow.core.machine import cancel, redrive

    requested = cancel(started().saga, "stop", T0)
    assert isinstance(requested, Transition)
    outcome = redrive(requested.saga, T0 + timedelta(minutes=5), T0 + timedelta(minutes=6))
    assert isinstance(outcome, Transition)
    (command,) = outcome.commands
    assert isinstance(command, DispatchTask)
    assert command.phase is Phase.COMPENSATION and command.position == 1  # never resent
