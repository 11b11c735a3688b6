"""The pure saga state machine: (saga, event) -> transition. No Celery, no SQL, no clock."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from sagaflow.core.definitions import Phase, SagaState, Step, StepStatus
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
    event_name,
    idempotency_key,
    new_saga,
    task_id_for,
)
from sagaflow.core.vocabulary import HistoryEvent

NOW = datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=timezone.utc)
LATER = NOW + timedelta(seconds=5)
SAGA_ID = "saga-0001"
DATA = {"order_id": "o-1", "sku": "WIDGET", "quantity": 2, "amount": 1999}
RESULTS = {
    "reserve_stock": {"reservation": "r-1"},
    "charge_payment": {"charge": "c-1"},
    "schedule_shipping": {"shipment": "s-1"},
}
BOOM = ErrorInfo(type="RuntimeError", message="boom", traceback="Traceback...")


def order_steps() -> list[Step]:
    return [
        Step("reserve_stock", "inventory.reserve", "inventory.release", queue="inventory"),
        Step("charge_payment", "payments.charge", "payments.refund", queue="payments"),
        Step(
            "schedule_shipping",
            "shipping.schedule",
            "shipping.cancel",
            queue="shipping",
            compensation_queue="shipping-undo",
        ),
    ]


def started(steps: list[Step] | None = None, saga_type: str = "order") -> Transition:
    saga = new_saga(SAGA_ID, saga_type, DATA, steps or order_steps(), NOW)
    return begin(saga, NOW)


def transition(outcome: Transition | Ignored) -> Transition:
    assert isinstance(outcome, Transition), outcome
    return outcome


CURRENT: Any = object()  # "the task dispatched for this step and phase"


def _current(saga: SagaRecord, position: int, phase: Phase) -> tuple[int, str | None]:
    step = saga.steps[position]
    if phase is Phase.ACTION:
        return step.attempts, step.task_id
    return step.compensation_attempts, step.compensation_task_id


def ok(
    saga: SagaRecord,
    position: int,
    phase: Phase = Phase.ACTION,
    result: object = None,
    *,
    attempt: int | None = None,
    task_id: str | None = CURRENT,
) -> StepSucceeded:
    """A success report; by default exactly the one the saga waits for from this step."""
    current_attempt, current_task = _current(saga, position, phase)
    return StepSucceeded(
        position,
        phase,
        current_attempt if attempt is None else attempt,
        result,
        current_task if task_id is CURRENT else task_id,
    )


def err(
    saga: SagaRecord,
    position: int,
    phase: Phase = Phase.ACTION,
    *,
    attempt: int | None = None,
    task_id: str | None = CURRENT,
    error: ErrorInfo = BOOM,
) -> StepFailed:
    """A failure report; the error names the failing task, as sagaflow's errback does."""
    current_attempt, current_task = _current(saga, position, phase)
    return StepFailed(
        position,
        phase,
        current_attempt if attempt is None else attempt,
        replace(error, task_id=current_task if task_id is CURRENT else task_id),
    )


def succeed(saga: SagaRecord, position: int, result: object = None) -> Transition:
    return transition(apply(saga, ok(saga, position, Phase.ACTION, result), LATER))


def fail(saga: SagaRecord, position: int, error: ErrorInfo = BOOM) -> Transition:
    return transition(apply(saga, err(saga, position, error=error), LATER))


def compensated(saga: SagaRecord, position: int) -> Transition:
    return transition(apply(saga, ok(saga, position, Phase.COMPENSATION), LATER))


def only_dispatch(t: Transition) -> DispatchTask:
    assert len(t.commands) == 1, t.commands
    command = t.commands[0]
    assert isinstance(command, DispatchTask), command
    return command


def only_publish(t: Transition) -> PublishEvent:
    assert len(t.commands) == 1, t.commands
    command = t.commands[0]
    assert isinstance(command, PublishEvent), command
    return command


def run_until(position: int, steps: list[Step] | None = None) -> SagaRecord:
    """A saga whose steps before `position` succeeded and whose step `position` is executing."""
    saga = started(steps).saga
    names = [s.name for s in saga.steps]
    for done in range(position):
        saga = succeed(saga, done, RESULTS.get(names[done], {"done": names[done]})).saga
    return saga


def assert_ignored(saga: SagaRecord, event: StepSucceeded | StepFailed) -> None:
    before = copy.deepcopy(saga)
    outcome = apply(saga, event, LATER)
    assert isinstance(outcome, Ignored), outcome
    assert outcome.reason
    assert saga == before


# -- naming helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("saga_type", "outcome", "expected"),
    [
        ("order", "Completed", "OrderCompleted"),
        ("order", "Failed", "OrderFailed"),
        ("ship-parcel.v2", "Completed", "ShipParcelV2Completed"),
        ("gift_order", "CompensationFailed", "GiftOrderCompensationFailed"),
    ],
)
def test_event_name(saga_type: str, outcome: str, expected: str) -> None:
    assert event_name(saga_type, outcome) == expected


def test_task_id_and_idempotency_key_are_deterministic() -> None:
    assert task_id_for("s", 2, Phase.ACTION, 1) == "s.2.action.1"
    assert task_id_for("s", 0, Phase.COMPENSATION, 3) == "s.0.compensation.3"
    assert idempotency_key("s", "charge", Phase.ACTION) == "s:charge"
    assert idempotency_key("s", "charge", Phase.COMPENSATION) == "s:charge:compensation"


# -- starting ------------------------------------------------------------------------------------


def test_new_saga_is_started_with_pending_steps() -> None:
    saga = new_saga(SAGA_ID, "order", DATA, order_steps(), NOW)
    assert saga.state is SagaState.STARTED
    assert saga.version == 0
    assert saga.created_at == saga.updated_at == NOW
    assert [s.status for s in saga.steps] == [StepStatus.PENDING] * 3
    assert [s.position for s in saga.steps] == [0, 1, 2]
    # The compensation queue defaults to the step's queue.
    assert [s.compensation_queue for s in saga.steps] == ["inventory", "payments", "shipping-undo"]


def test_begin_dispatches_step_zero_with_context() -> None:
    saga = new_saga(SAGA_ID, "order", DATA, order_steps(), NOW)
    t = begin(saga, NOW)

    command = only_dispatch(t)
    assert command == DispatchTask(
        saga_id=SAGA_ID,
        position=0,
        phase=Phase.ACTION,
        attempt=1,
        task_name="inventory.reserve",
        queue="inventory",
        task_id=f"{SAGA_ID}.0.action.1",
        context={
            "saga_id": SAGA_ID,
            "saga_type": "order",
            "step": "reserve_stock",
            "data": DATA,
            "results": {},
            "idempotency_key": f"{SAGA_ID}:reserve_stock",
        },
    )
    assert t.saga.state is SagaState.PENDING
    assert t.saga.current_step == 0
    first = t.saga.steps[0]
    assert first.status is StepStatus.EXECUTING
    assert first.attempts == 1
    assert first.task_id == f"{SAGA_ID}.0.action.1"
    assert first.started_at == NOW
    assert [s.status for s in t.saga.steps[1:]] == [StepStatus.PENDING, StepStatus.PENDING]
    assert t.changed_steps == frozenset({0})
    assert [h.event for h in t.history] == [HistoryEvent.SAGA_STARTED, HistoryEvent.STEP_DISPATCHED]
    assert (t.history[0].from_state, t.history[0].to_state) == (
        SagaState.STARTED,
        SagaState.PENDING,
    )
    # begin() is pure: the input record is untouched.
    assert saga.state is SagaState.STARTED
    assert saga.steps[0].status is StepStatus.PENDING


def test_begin_refuses_a_saga_that_is_not_started() -> None:
    running = started().saga
    with pytest.raises(ValueError, match="not started"):
        begin(running, NOW)


# -- forward progress ----------------------------------------------------------------------------


def test_success_advances_and_passes_results_forward() -> None:
    saga = started().saga

    t1 = succeed(saga, 0, RESULTS["reserve_stock"])
    c1 = only_dispatch(t1)
    assert (c1.position, c1.phase, c1.attempt) == (1, Phase.ACTION, 1)
    assert c1.task_name == "payments.charge"
    assert c1.queue == "payments"
    assert c1.task_id == f"{SAGA_ID}.1.action.1"
    assert c1.context["step"] == "charge_payment"
    assert c1.context["results"] == {"reserve_stock": RESULTS["reserve_stock"]}
    assert c1.context["idempotency_key"] == f"{SAGA_ID}:charge_payment"
    assert c1.context["data"] == DATA
    assert t1.saga.state is SagaState.PENDING
    assert t1.saga.current_step == 1
    assert t1.saga.steps[0].status is StepStatus.COMPLETED
    assert t1.saga.steps[0].result == RESULTS["reserve_stock"]
    assert t1.saga.steps[0].finished_at == LATER
    assert t1.saga.steps[1].status is StepStatus.EXECUTING
    assert t1.changed_steps == frozenset({0, 1})
    assert [h.event for h in t1.history] == [
        HistoryEvent.STEP_COMPLETED,
        HistoryEvent.STEP_DISPATCHED,
    ]

    t2 = succeed(t1.saga, 1, RESULTS["charge_payment"])
    c2 = only_dispatch(t2)
    assert c2.position == 2
    assert c2.task_name == "shipping.schedule"
    assert c2.context["results"] == {
        "reserve_stock": RESULTS["reserve_stock"],
        "charge_payment": RESULTS["charge_payment"],
    }


@pytest.mark.parametrize(
    ("saga_type", "expected_event"),
    [("order", "OrderCompleted"), ("ship-parcel.v2", "ShipParcelV2Completed")],
)
def test_last_success_completes_and_publishes(saga_type: str, expected_event: str) -> None:
    saga = started(saga_type=saga_type).saga
    for position, result in enumerate(RESULTS.values()):
        t = succeed(saga, position, result)
        saga = t.saga

    assert saga.state is SagaState.COMPLETED
    assert saga.current_step is None
    assert saga.finished_at == LATER
    assert saga.error is None
    assert [s.status for s in saga.steps] == [StepStatus.COMPLETED] * 3
    event = only_publish(t)
    assert event.name == expected_event
    assert event.payload == {
        "saga_id": SAGA_ID,
        "saga_type": saga_type,
        "state": "completed",
        "error": None,
        "results": RESULTS,
        "compensated": [],
    }
    assert [h.event for h in t.history] == [
        HistoryEvent.STEP_COMPLETED,
        HistoryEvent.SAGA_COMPLETED,
    ]
    assert t.history[-1].to_state is SagaState.COMPLETED


# -- failure and compensation ---------------------------------------------------------------------


@pytest.mark.parametrize("failed_at", [0, 1, 2])
def test_failure_compensates_completed_steps_in_reverse(failed_at: int) -> None:
    saga = run_until(failed_at)
    names = [s.name for s in saga.steps]
    compensations = ["inventory.release", "payments.refund", "shipping.cancel"]
    queues = ["inventory", "payments", "shipping-undo"]

    t = fail(saga, failed_at)
    saga = t.saga
    error = replace(BOOM, task_id=f"{SAGA_ID}.{failed_at}.action.1")
    assert saga.error == error
    assert saga.steps[failed_at].status is StepStatus.FAILED
    assert saga.steps[failed_at].error == error
    for later in saga.steps[failed_at + 1 :]:
        assert later.status is StepStatus.SKIPPED
        assert later.attempts == 0
    assert t.history[0].event == HistoryEvent.STEP_FAILED
    assert t.history[0].detail == {"error": error.to_json()}
    assert t.history[1].event == HistoryEvent.COMPENSATION_STARTED
    assert t.history[1].to_state is SagaState.COMPENSATING
    assert t.changed_steps >= frozenset(range(failed_at, 3))

    # Compensations run one at a time, newest completed step first; the failed step is not
    # compensated.
    expected_order = list(range(failed_at - 1, -1, -1))
    dispatched = []
    for position in expected_order:
        assert saga.state is SagaState.COMPENSATING
        assert saga.current_step == position
        command = only_dispatch(t)
        dispatched.append(command.position)
        assert command.phase is Phase.COMPENSATION
        assert command.attempt == 1
        assert command.task_name == compensations[position]
        assert command.queue == queues[position]
        assert command.task_id == f"{SAGA_ID}.{position}.compensation.1"
        assert command.context["step"] == names[position]
        assert command.context["result"] == RESULTS[names[position]]
        assert command.context["error"] is None
        assert command.context["idempotency_key"] == f"{SAGA_ID}:{names[position]}:compensation"
        assert command.context["results"] == {n: RESULTS[n] for n in names[:position]}
        assert saga.steps[position].status is StepStatus.COMPENSATING
        # Nothing older is compensating yet.
        assert all(s.status is StepStatus.COMPLETED for s in saga.steps[:position])
        t = compensated(saga, position)
        saga = t.saga
        assert saga.steps[position].status is StepStatus.COMPENSATED
        assert saga.steps[position].compensated_at == LATER
    assert dispatched == expected_order

    assert saga.state is SagaState.FAILED
    assert saga.current_step is None
    assert saga.finished_at == LATER
    assert saga.steps[failed_at].status is StepStatus.FAILED
    assert saga.steps[failed_at].compensation_attempts == 0
    event = only_publish(t)
    assert event.name == "OrderFailed"
    assert event.payload["state"] == "failed"
    assert event.payload["error"] == error.to_json()
    assert event.payload["compensated"] == names[:failed_at]
    assert t.history[-1].event == HistoryEvent.SAGA_FAILED
    assert t.history[-1].to_state is SagaState.FAILED


def test_step_without_compensation_is_passed_over() -> None:
    steps = [
        Step("reserve_stock", "inventory.reserve", "inventory.release"),
        Step("notify", "mail.notify"),  # nothing to undo
        Step("charge_payment", "payments.charge", "payments.refund"),
        Step("schedule_shipping", "shipping.schedule", "shipping.cancel"),
    ]
    saga = run_until(3, steps)

    t = fail(saga, 3)
    assert only_dispatch(t).task_name == "payments.refund"
    t = compensated(t.saga, 2)
    command = only_dispatch(t)
    assert command.task_name == "inventory.release"
    assert command.position == 0
    assert t.saga.steps[1].status is StepStatus.COMPLETED
    t = compensated(t.saga, 0)
    assert t.saga.state is SagaState.FAILED
    assert t.saga.steps[1].status is StepStatus.COMPLETED
    assert t.saga.steps[1].compensation_attempts == 0
    assert only_publish(t).payload["compensated"] == ["reserve_stock", "charge_payment"]


def test_failure_with_no_compensations_at_all_fails_at_once() -> None:
    steps = [Step("a", "svc.a"), Step("b", "svc.b")]
    saga = run_until(1, steps)

    t = fail(saga, 1)
    assert t.saga.state is SagaState.FAILED
    assert only_publish(t).name == "OrderFailed"
    assert t.saga.steps[0].status is StepStatus.COMPLETED


def test_compensate_on_failure_compensates_the_failed_step_first() -> None:
    steps = [
        Step("reserve_stock", "inventory.reserve", "inventory.release"),
        Step("charge_payment", "payments.charge", "payments.void", compensate_on_failure=True),
        Step("schedule_shipping", "shipping.schedule", "shipping.cancel"),
    ]
    saga = run_until(1, steps)

    t = fail(saga, 1)
    command = only_dispatch(t)
    assert command.position == 1
    assert command.task_name == "payments.void"
    assert command.context["result"] is None
    assert command.context["error"] == replace(BOOM, task_id=f"{SAGA_ID}.1.action.1").to_json()
    assert t.saga.steps[1].status is StepStatus.COMPENSATING
    assert t.saga.steps[2].status is StepStatus.SKIPPED

    t = compensated(t.saga, 1)
    command = only_dispatch(t)
    assert command.position == 0
    assert command.task_name == "inventory.release"
    assert command.context["result"] == RESULTS["reserve_stock"]

    t = compensated(t.saga, 0)
    assert t.saga.state is SagaState.FAILED
    assert only_publish(t).payload["compensated"] == ["reserve_stock", "charge_payment"]


def test_compensate_on_failure_of_the_first_step() -> None:
    steps = [Step("hold", "svc.hold", "svc.unhold", compensate_on_failure=True), Step("b", "svc.b")]
    saga = run_until(0, steps)

    t = fail(saga, 0)
    assert only_dispatch(t).task_name == "svc.unhold"
    t = compensated(t.saga, 0)
    assert t.saga.state is SagaState.FAILED


REFUND_ERROR = ErrorInfo(
    type="RefundError", message="card closed", task_id=f"{SAGA_ID}.1.compensation.1"
)


def compensation_failed_saga() -> tuple[SagaRecord, Transition]:
    saga = fail(run_until(2), 2).saga  # compensating charge_payment (position 1)
    event = err(saga, 1, Phase.COMPENSATION, error=REFUND_ERROR)
    return saga, transition(apply(saga, event, LATER))


def test_compensation_failure_stops_and_needs_an_operator() -> None:
    before, t = compensation_failed_saga()
    saga = t.saga
    error = REFUND_ERROR

    assert saga.state is SagaState.COMPENSATION_FAILED
    assert saga.state.is_terminal
    assert saga.error == error
    assert saga.finished_at == LATER
    assert saga.steps[1].status is StepStatus.COMPENSATION_FAILED
    assert saga.steps[1].error == error
    # The older step is left alone: no compensation is dispatched for it.
    assert saga.steps[0].status is StepStatus.COMPLETED
    assert saga.steps[0].compensation_attempts == 0
    assert not any(isinstance(c, DispatchTask) for c in t.commands)
    event = only_publish(t)
    assert event.name == "OrderCompensationFailed"
    assert event.payload["state"] == "compensation_failed"
    assert event.payload["error"] == error.to_json()
    assert [h.event for h in t.history] == ["compensation_failed"]
    assert t.history[0].detail == {"error": error.to_json()}
    assert t.changed_steps == frozenset({1})
    assert before.state is SagaState.COMPENSATING

    # And nothing moves it afterwards.
    assert_ignored(saga, ok(saga, 1, Phase.COMPENSATION))
    assert_ignored(saga, ok(saga, 0, Phase.COMPENSATION, attempt=1))


# -- events the saga is not waiting for ----------------------------------------------------------
#
# Each event below is the expected one with exactly one thing wrong, so each test fails if the
# guard it targets goes away.


def test_the_expected_events_are_accepted() -> None:
    """The baseline for the tests below: the unaltered events do move the saga."""
    running = started().saga
    assert isinstance(apply(running, ok(running, 0), LATER), Transition)
    assert isinstance(apply(running, err(running, 0), LATER), Transition)
    compensating = fail(run_until(2), 2).saga
    assert isinstance(
        apply(compensating, ok(compensating, 1, Phase.COMPENSATION), LATER), Transition
    )
    assert isinstance(
        apply(compensating, err(compensating, 1, Phase.COMPENSATION), LATER), Transition
    )


def test_duplicate_success_is_ignored() -> None:
    saga = started().saga
    event = ok(saga, 0, result=RESULTS["reserve_stock"])
    advanced = transition(apply(saga, event, LATER)).saga
    assert_ignored(advanced, event)
    assert_ignored(advanced, err(saga, 0))  # a failure report for the same run of the task


def test_duplicate_compensation_success_is_ignored() -> None:
    saga = fail(run_until(2), 2).saga
    event = ok(saga, 1, Phase.COMPENSATION)
    advanced = transition(apply(saga, event, LATER)).saga
    assert advanced.steps[0].status is StepStatus.COMPENSATING
    assert_ignored(advanced, event)


def test_late_events_for_an_earlier_step_are_ignored() -> None:
    saga = run_until(2)  # steps 0 and 1 completed, step 2 executing
    assert_ignored(saga, ok(saga, 0, result={"other": "result"}))
    assert_ignored(saga, err(saga, 0))
    assert_ignored(saga, err(saga, 1))


def test_events_for_a_step_not_yet_dispatched_are_ignored() -> None:
    saga = started().saga
    future_task = task_id_for(SAGA_ID, 1, Phase.ACTION, 1)
    assert_ignored(saga, ok(saga, 1, attempt=0))
    assert_ignored(saga, ok(saga, 1, attempt=1, task_id=future_task))
    assert_ignored(saga, err(saga, 2, attempt=1, task_id=None))


@pytest.mark.parametrize("attempt", [0, 2, 99])
def test_stale_or_unknown_attempt_is_ignored(attempt: int) -> None:
    saga = started().saga
    assert saga.steps[0].attempts == 1
    assert_ignored(saga, ok(saga, 0, attempt=attempt))
    assert_ignored(saga, err(saga, 0, attempt=attempt))


@pytest.mark.parametrize("attempt", [0, 2])
def test_stale_compensation_attempt_is_ignored(attempt: int) -> None:
    saga = fail(run_until(2), 2).saga
    assert saga.steps[1].compensation_attempts == 1
    assert_ignored(saga, ok(saga, 1, Phase.COMPENSATION, attempt=attempt))
    assert_ignored(saga, err(saga, 1, Phase.COMPENSATION, attempt=attempt))


@pytest.mark.parametrize(
    "task_id",
    [
        None,
        "",
        "forged",
        f"{SAGA_ID}.0.action.2",
        f"{SAGA_ID}.1.action.1",
        f"x{SAGA_ID}.0.action.1",
    ],
)
def test_outcome_from_another_task_is_ignored(task_id: str | None) -> None:
    saga = started().saga
    assert saga.steps[0].task_id == f"{SAGA_ID}.0.action.1"
    assert_ignored(saga, ok(saga, 0, task_id=task_id))
    assert_ignored(saga, err(saga, 0, task_id=task_id))


@pytest.mark.parametrize("task_id", [None, f"{SAGA_ID}.1.action.1", f"{SAGA_ID}.0.compensation.1"])
def test_compensation_outcome_from_another_task_is_ignored(task_id: str | None) -> None:
    saga = fail(run_until(2), 2).saga
    assert saga.steps[1].compensation_task_id == f"{SAGA_ID}.1.compensation.1"
    assert_ignored(saga, ok(saga, 1, Phase.COMPENSATION, task_id=task_id))
    assert_ignored(saga, err(saga, 1, Phase.COMPENSATION, task_id=task_id))


def test_wrong_phase_is_ignored() -> None:
    running = started().saga
    # A compensation outcome while the step's action is executing.
    assert_ignored(running, ok(running, 0, Phase.COMPENSATION, attempt=1))
    assert_ignored(running, err(running, 0, Phase.COMPENSATION, attempt=0))

    compensating = fail(run_until(2), 2).saga
    # An action outcome, from the action's own task, while the step is being compensated.
    assert_ignored(compensating, ok(compensating, 1))
    assert_ignored(compensating, err(compensating, 1))
    # Outcomes for the failed step, which is not being compensated.
    assert_ignored(compensating, ok(compensating, 2))
    assert_ignored(compensating, ok(compensating, 2, Phase.COMPENSATION, attempt=1))


@pytest.mark.parametrize("position", [-1, 3, 100])
def test_position_out_of_range_is_ignored(position: int) -> None:
    saga = started().saga
    task_id = task_id_for(SAGA_ID, position, Phase.ACTION, 1)
    assert_ignored(saga, StepSucceeded(position, Phase.ACTION, 1, None, task_id))
    assert_ignored(saga, StepFailed(position, Phase.ACTION, 1, replace(BOOM, task_id=task_id)))
    compensating = fail(run_until(2), 2).saga
    assert_ignored(compensating, StepSucceeded(position, Phase.COMPENSATION, 1, None, task_id))


def test_negative_position_does_not_alias_the_last_step() -> None:
    saga = run_until(2)  # the last step is executing
    last = saga.steps[2]
    assert isinstance(apply(saga, ok(saga, 2), LATER), Transition)
    assert_ignored(saga, StepSucceeded(-1, Phase.ACTION, last.attempts, None, last.task_id))
    error = replace(BOOM, task_id=last.task_id)
    assert_ignored(saga, StepFailed(-1, Phase.ACTION, last.attempts, error))


def terminal_sagas() -> dict[str, SagaRecord]:
    saga = started().saga
    for position in range(3):
        saga = succeed(saga, position, {"n": position}).saga
    return {
        "completed": saga,
        "failed": fail(run_until(0), 0).saga,
        "compensation_failed": compensation_failed_saga()[1].saga,
    }


@pytest.mark.parametrize("state", ["completed", "failed", "compensation_failed"])
def test_any_event_on_a_terminal_saga_is_ignored(state: str) -> None:
    saga = terminal_sagas()[state]
    assert saga.state.value == state
    assert saga.state.is_terminal
    for position in range(3):
        for phase in Phase:
            for attempt in (0, 1, 2):
                # From the step's own task, and from the task of this very attempt.
                own_task = ok(saga, position, phase).task_id
                for task_id in {own_task, task_id_for(SAGA_ID, position, phase, attempt)}:
                    event = ok(saga, position, phase, {"x": 1}, attempt=attempt, task_id=task_id)
                    assert_ignored(saga, event)
                    assert_ignored(
                        saga, err(saga, position, phase, attempt=attempt, task_id=task_id)
                    )
