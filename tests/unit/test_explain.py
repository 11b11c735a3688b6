"""What the CLI and the dashboard tell an operator about a saga: the task it waits on (the
compensation's queue while compensating) and the next command to run."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

from sagaflow.core.definitions import Phase, SagaState, Step, StepStatus
from sagaflow.core.machine import SagaRecord, begin, new_saga
from sagaflow.ops.explain import STEP_CLASS, next_actions, waiting_on

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
STEPS = [
    Step("reserve", "stock.reserve", "stock.release", queue="stock"),
    Step("charge", "pay.charge", "pay.refund", queue="pay", compensation_queue="refunds"),
]


def running() -> SagaRecord:
    return begin(new_saga("o-1", "order", {}, STEPS, T0), T0).saga


def with_step(saga: SagaRecord, position: int, **changes: object) -> SagaRecord:
    steps = list(saga.steps)
    steps[position] = replace(steps[position], **changes)  # type: ignore[arg-type]
    return replace(saga, steps=tuple(steps), current_step=position)


def test_a_running_step_waits_on_its_action_queue() -> None:
    saga = running()
    waiting = waiting_on(saga)
    assert waiting is not None
    assert (waiting.step, waiting.phase, waiting.task, waiting.queue) == (
        "reserve",
        Phase.ACTION,
        "stock.reserve",
        "stock",
    )


def test_a_compensating_step_waits_on_its_compensation_queue() -> None:
    started = T0 + timedelta(seconds=5)
    saga = with_step(
        replace(running(), state=SagaState.COMPENSATING),
        1,
        status=StepStatus.COMPENSATING,
        compensation_started_at=started,
    )
    waiting = waiting_on(saga)
    assert waiting is not None
    assert (waiting.task, waiting.queue, waiting.phase) == (
        "pay.refund",
        "refunds",
        Phase.COMPENSATION,
    )
    assert waiting.since == started


def test_a_finished_saga_waits_on_nothing_and_needs_nothing() -> None:
    done = replace(running(), state=SagaState.COMPLETED)
    assert waiting_on(done) is None and next_actions(done) == []


def test_a_failed_compensation_names_retry_and_mark_compensated_with_the_step() -> None:
    saga = with_step(
        replace(running(), state=SagaState.COMPENSATION_FAILED),
        1,
        status=StepStatus.COMPENSATION_FAILED,
    )
    commands = [a.command for a in next_actions(saga)]
    assert commands == [
        "sagaflow retry o-1",
        "sagaflow mark-compensated o-1 charge --reason '...'",
    ]
    assert next_actions(saga)[0].button == "retry"


def test_an_escalated_saga_names_resolve_with_the_step() -> None:
    saga = with_step(
        replace(running(), state=SagaState.ESCALATED), 0, status=StepStatus.OUTCOME_UNKNOWN
    )
    (action,) = next_actions(saga)
    assert action.command == "sagaflow resolve o-1 reserve --applied|--not-applied --reason '...'"


def test_a_running_saga_can_be_cancelled() -> None:
    (action,) = next_actions(running())
    assert action.command.startswith("sagaflow cancel o-1") and action.button == "cancel"


def test_a_failed_compensation_is_red_and_every_status_has_a_colour() -> None:
    assert STEP_CLASS[StepStatus.COMPENSATION_FAILED] == "alarm"
    assert set(STEP_CLASS) == set(StepStatus)
