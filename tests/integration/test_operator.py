"""Operator actions on a saga stopped in compensation_failed: retry, mark compensated by hand."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone

from sagaflow import SagaState, Step, StepStatus
from sagaflow.core.definitions import Phase
from sagaflow.core.machine import (
    DispatchTask,
    ErrorInfo,
    Ignored,
    SagaRecord,
    StepFailed,
    StepSucceeded,
    Transition,
    apply,
    begin,
    cancel,
    mark_compensated,
    new_saga,
    retry_compensation,
)
from sagaflow.core.vocabulary import ErrorType, HistoryEvent
from sagaflow.devstack.processes import WorkerSpec
from tests.conftest import Stack, poll

ON_EVERY_BROKER = True  # its stack tests run on Redis, RabbitMQ and the embedded broker

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
STEPS = [Step(n, "svc.act", "svc.undo", queue="q") for n in ("one", "two", "three")]


def stuck() -> SagaRecord:
    """one and two completed, three failed, two's compensation failed."""
    saga = begin(new_saga("s", "trip", {}, STEPS, T0), T0).saga
    for position in (0, 1):
        done = apply(
            saga,
            StepSucceeded(position, Phase.ACTION, 1, {"p": position}, f"s.{position}.action.1"),
            T0,
        )
        assert isinstance(done, Transition)
        saga = done.saga
    failed = apply(
        saga,
        StepFailed(2, Phase.ACTION, 1, ErrorInfo("Boom", "three failed", task_id="s.2.action.1")),
        T0,
    )
    assert isinstance(failed, Transition)
    refused = apply(
        failed.saga,
        StepFailed(
            1, Phase.COMPENSATION, 1, ErrorInfo("Refused", "no", task_id="s.1.compensation.1")
        ),
        T0,
    )
    assert isinstance(refused, Transition)
    assert refused.saga.state is SagaState.COMPENSATION_FAILED
    return refused.saga


def test_retry_sends_the_failed_compensation_again() -> None:
    outcome = retry_compensation(stuck(), T0)
    assert isinstance(outcome, Transition)
    assert outcome.saga.state is SagaState.COMPENSATING
    assert outcome.saga.error is not None and outcome.saga.error.type == "Boom"  # the cause
    (command,) = outcome.commands
    assert isinstance(command, DispatchTask)
    assert command.phase is Phase.COMPENSATION and command.position == 1
    assert command.attempt == 2 and command.context["result"] == {"p": 1}
    assert outcome.history[0].event == HistoryEvent.COMPENSATION_RETRIED


def test_marking_compensated_records_the_reason_and_carries_on() -> None:
    outcome = mark_compensated(stuck(), "two", "refunded by hand, ticket 42", T0)
    assert isinstance(outcome, Transition)
    assert outcome.saga.steps[1].status is StepStatus.COMPENSATED
    assert outcome.history[0].detail == {"reason": "refunded by hand, ticket 42"}
    (command,) = outcome.commands  # next: one's compensation
    assert isinstance(command, DispatchTask) and command.position == 0


def test_operator_actions_refuse_sagas_they_do_not_apply_to() -> None:
    running = begin(new_saga("s", "trip", {}, STEPS, T0), T0).saga
    assert isinstance(retry_compensation(running, T0), Ignored)
    assert isinstance(mark_compensated(running, "one", "x", T0), Ignored)
    wrong_step = mark_compensated(stuck(), "one", "x", T0)
    assert isinstance(wrong_step, Ignored) and "the failed one: 'two'" in wrong_step.reason


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return stack.cli(*args)


def test_retry_resumes_compensation_from_where_it_stopped(stack: Stack) -> None:
    saga_id = stack.start("trip", {"fail_at": ["a3"], "fail_first_compensation_at": ["b2"]})
    assert stack.wait_one(saga_id).state is SagaState.COMPENSATION_FAILED
    result = cli(stack, "retry", saga_id, "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    saga = stack.store.get(saga_id)
    assert saga.state is SagaState.FAILED
    assert saga.error is not None and saga.error.type == "StepRefused"  # the original cause
    assert stack.executions(saga_id) == [
        ("a1", "action"),
        ("b2", "action"),
        ("a3", "action"),
        ("b2", "compensation"),
        ("b2", "compensation"),
        ("a1", "compensation"),
    ]
    assert HistoryEvent.COMPENSATION_RETRIED in [h.event for h in stack.store.history(saga_id)]


def test_mark_compensated_by_hand_keeps_the_reason(stack: Stack) -> None:
    saga_id = stack.start("trip", {"fail_at": ["a3"], "fail_compensation_at": ["b2"]})
    assert stack.wait_one(saga_id).state is SagaState.COMPENSATION_FAILED
    result = cli(
        stack, "mark-compensated", saga_id, "b2", "--reason", "voided in the ledger", "--wait"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    saga = stack.store.get(saga_id)
    assert saga.state is SagaState.FAILED
    assert "error: StepRefused" in result.stdout  # --wait says why the saga failed
    assert [s.status for s in saga.steps[:2]] == [StepStatus.COMPENSATED] * 2
    history = json.loads(cli(stack, "history", saga_id, "--json").stdout)
    manual = [h for h in history if h["event"] == HistoryEvent.STEP_COMPENSATED_MANUALLY]
    assert manual and manual[0]["detail"] == {"reason": "voided in the ledger"}
    assert stack.executions(saga_id)[-1] == ("a1", "compensation")


def test_retrying_a_saga_that_did_not_fail_its_compensation_is_a_clear_error(
    stack: Stack,
) -> None:
    saga_id = stack.start("dynamic", {"n": 1})
    stack.wait_one(saga_id)
    result = cli(stack, "retry", saga_id)
    assert result.returncode == 1
    assert "cannot retry saga" in result.stderr and "saga is completed" in result.stderr
    assert "Traceback" not in result.stderr
    missing_reason = cli(stack, "mark-compensated", saga_id, "s1")
    assert missing_reason.returncode == 2  # click: --reason is required
    as_json = cli(stack, "retry", saga_id, "--json")
    assert as_json.returncode == 1 and as_json.stderr == "", as_json.stdout + as_json.stderr
    printed = json.loads(as_json.stdout)
    assert printed["code"] == 1 and printed["error"]["type"] == "InvalidOperation", printed


def test_operator_actions_print_json(stack: Stack) -> None:
    saga_id = stack.start("trip", {"fail_at": ["a3"], "fail_first_compensation_at": ["b2"]})
    assert stack.wait_one(saga_id).state is SagaState.COMPENSATION_FAILED
    result = cli(stack, "retry", saga_id[:13], "--json")  # a prefix names it too
    assert result.returncode == 0, result.stdout + result.stderr
    printed = json.loads(result.stdout)
    assert printed["saga_id"] == saga_id and printed["done"] == "compensation retried"
    assert printed["version"] > 0
    assert stack.wait_one(saga_id).state is SagaState.FAILED
    waited = cli(stack, "cancel", saga_id, "--json", "--wait")
    assert waited.returncode == 1, waited.stdout + waited.stderr  # a finished saga: refused
    assert json.loads(waited.stdout)["error"]["type"] == "InvalidOperation"


# -- cancel ------------------------------------------------------------------------------------


def test_cancel_waits_for_the_step_in_flight_then_undoes_it_and_the_rest() -> None:
    saga = begin(new_saga("s", "trip", {}, STEPS, T0), T0).saga
    first = apply(saga, StepSucceeded(0, Phase.ACTION, 1, {"p": 0}, "s.0.action.1"), T0)
    assert isinstance(first, Transition)  # two is now in flight
    requested = cancel(first.saga, "customer changed their mind", T0)
    assert isinstance(requested, Transition)
    assert requested.commands == ()  # nothing new is sent; two is waited for
    assert requested.saga.state is SagaState.PENDING
    done = apply(requested.saga, StepSucceeded(1, Phase.ACTION, 1, {"p": 1}, "s.1.action.1"), T0)
    assert isinstance(done, Transition)
    (command,) = done.commands
    assert isinstance(command, DispatchTask)
    assert command.phase is Phase.COMPENSATION and command.position == 1  # two itself first
    undo_two = apply(
        done.saga, StepSucceeded(1, Phase.COMPENSATION, 1, None, "s.1.compensation.1"), T0
    )
    assert isinstance(undo_two, Transition)
    undo_one = apply(
        undo_two.saga, StepSucceeded(0, Phase.COMPENSATION, 1, None, "s.0.compensation.1"), T0
    )
    assert isinstance(undo_one, Transition)
    assert undo_one.saga.state is SagaState.CANCELLED
    assert undo_one.saga.error is not None and undo_one.saga.error.type == ErrorType.CANCELLED
    assert [c.name for c in undo_one.commands] == ["TripCancelled"]  # type: ignore[union-attr]


def test_cancel_refuses_finished_and_compensating_sagas() -> None:
    assert isinstance(cancel(stuck(), "x", T0), Ignored)
    compensating = retry_compensation(stuck(), T0)
    assert isinstance(compensating, Transition)
    refused = cancel(compensating.saga, "x", T0)
    assert isinstance(refused, Ignored) and "cannot be cancelled" in refused.reason


def test_cancel_a_running_saga_end_to_end(stack: Stack) -> None:
    saga_id = stack.start("detour", {})
    stack.wait_dispatched(saga_id, 1)  # l2 waits on a queue nobody consumes yet
    result = cli(stack, "cancel", saga_id, "--reason", "order withdrawn")
    assert result.returncode == 0, result.stderr
    poll(
        lambda: stack.store.get(saga_id).cancel_requested_at is not None,
        30,
        lambda: f"cancel of {saga_id} never recorded{stack.logs_hint()}",
    )
    later = stack.start_worker(WorkerSpec("later", "tests.services", ["later"]))
    try:
        saga = stack.wait_one(saga_id)
    finally:
        stack.group.stop_worker(later)
    assert saga.state is SagaState.CANCELLED
    assert saga.error is not None and saga.error.message == "order withdrawn"
    # a3 never ran; l2 finished and was undone first, then a1.
    assert stack.executions(saga_id) == [
        ("a1", "action"),
        ("l2", "action"),
        ("l2", "compensation"),
        ("a1", "compensation"),
    ]
    assert [e.name for e in stack.store.events(saga_id)] == ["DetourCancelled"]
    finished = cli(stack, "cancel", saga_id)
    assert finished.returncode == 1
    assert "saga is cancelled: nothing to cancel" in finished.stderr
