"""A step whose outcome is unknown (it timed out): verify it, or escalate to an operator."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from sagaflow import DefinitionError, SagaState, Step, StepStatus
from sagaflow.client.saga_client import InvalidOperation
from sagaflow.core.definitions import Phase
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
    on_timer,
    redrive,
    resolve,
)
from sagaflow.core.vocabulary import ErrorType, HistoryEvent, OnTimeout
from sagaflow.devstack.processes import WorkerSpec
from tests.conftest import ROOT, Stack, poll
from tests.integration.test_pivot import sweep_until, wait_for_state
from tests.integration.test_timeouts import sweep_until_timed_out

ON_EVERY_BROKER = True  # its stack tests run on Redis, RabbitMQ and the embedded broker

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
LATE = T0 + timedelta(seconds=11)


def steps(on_timeout: str = "verify", **kwargs: Any) -> list[Step]:
    verify = "svc.check" if on_timeout == "verify" else None
    return [
        Step("one", "svc.act", "svc.undo", queue="q"),
        Step(
            "two",
            "svc.act",
            "svc.undo",
            queue="q2",
            timeout=10,
            on_timeout=on_timeout,
            verify=verify,
            **kwargs,
        ),
        Step("three", "svc.act", "svc.undo", queue="q"),
    ]


def ok(saga: SagaRecord, position: int, result: object = None) -> SagaRecord:
    step = saga.steps[position]
    event = StepSucceeded(position, Phase.ACTION, step.attempts, result, step.task_id)
    outcome = apply(saga, event, T0)
    assert isinstance(outcome, Transition), outcome
    return outcome.saga


def timed_out(on_timeout: str = "verify", **kwargs: Any) -> Transition:
    saga = begin(new_saga("s", "order", {}, steps(on_timeout, **kwargs), T0), T0).saga
    outcome = on_timer(ok(saga, 0, {"one": 1}), 1, LATE)
    assert isinstance(outcome, Transition), outcome
    return outcome


def verify_reply(saga: SagaRecord, reply: object) -> Transition | Ignored:
    step = saga.steps[1]
    event = StepSucceeded(1, Phase.VERIFY, step.verify_attempts, reply, step.verify_task_id)
    return apply(saga, event, LATE)


def only(t: Transition) -> DispatchTask:
    (command,) = t.commands
    assert isinstance(command, DispatchTask)
    return command


def test_policies_are_checked_when_defined() -> None:
    assert Step("p", "a", pivot=True, timeout=5).on_timeout is OnTimeout.ESCALATE
    assert Step("p", "a", pivot=True, timeout=5, verify="c").on_timeout is OnTimeout.VERIFY
    with pytest.raises(DefinitionError, match="needs verify='<task name>'"):
        Step("s", "a", timeout=5, on_timeout="verify")
    with pytest.raises(DefinitionError, match="verify is used only with on_timeout='verify'"):
        Step("s", "a", timeout=5, verify="c")
    with pytest.raises(DefinitionError, match="needs a timeout"):
        Step("s", "a", on_timeout="escalate")


def test_a_timeout_dispatches_the_verify_task_with_the_actions_key() -> None:
    outcome = timed_out()
    command = only(outcome)
    assert command.phase is Phase.VERIFY and command.task_name == "svc.check"
    assert command.queue == "q2" and command.task_id == "s.1.verify.1"
    assert command.context["idempotency_key"] == "s:two"  # the action's, to look it up
    assert command.context["verifying"] == {"task_id": "s.1.action.1", "attempt": 1}
    assert outcome.saga.steps[1].status is StepStatus.VERIFYING
    assert outcome.saga.steps[1].deadline_at == LATE + timedelta(seconds=10)
    assert [h.event for h in outcome.history] == [
        HistoryEvent.STEP_TIMED_OUT,
        HistoryEvent.VERIFY_DISPATCHED,
    ]
    late = StepSucceeded(1, Phase.ACTION, 1, {}, "s.1.action.1")
    assert isinstance(apply(outcome.saga, late, LATE), Ignored)


def test_applied_counts_the_step_as_completed_and_goes_forward() -> None:
    outcome = verify_reply(timed_out().saga, {"applied": True, "result": {"ref": 7}})
    assert isinstance(outcome, Transition)
    assert outcome.saga.steps[1].status is StepStatus.COMPLETED
    assert outcome.saga.steps[1].result == {"ref": 7}
    command = only(outcome)
    assert command.position == 2 and command.context["results"]["two"] == {"ref": 7}
    assert outcome.history[0].detail == {"applied": True}


def test_not_applied_compensates_only_the_steps_before() -> None:
    outcome = verify_reply(timed_out().saga, {"applied": False})
    assert isinstance(outcome, Transition)
    assert outcome.saga.state is SagaState.COMPENSATING
    assert outcome.saga.steps[1].status is StepStatus.FAILED
    command = only(outcome)
    assert command.phase is Phase.COMPENSATION and command.position == 0


def test_not_applied_sends_a_retriable_step_again() -> None:
    retriable = [
        Step("p", "svc.act", pivot=True),
        Step("r", "svc.act", retriable=True, timeout=10, on_timeout="verify", verify="c"),
    ]
    saga = begin(new_saga("s", "order", {}, retriable, T0), T0).saga
    verifying = on_timer(ok(saga, 0), 1, LATE)
    assert isinstance(verifying, Transition)
    step = verifying.saga.steps[1]
    event = StepSucceeded(1, Phase.VERIFY, 1, {"applied": False}, step.verify_task_id)
    again = apply(verifying.saga, event, LATE)
    assert isinstance(again, Transition)
    assert only(again).task_id == "s.1.action.2"


@pytest.mark.parametrize("reply", [None, "yes", {"applied": "yes"}, {"result": 1}, [True]])
def test_an_invalid_answer_escalates(reply: object) -> None:
    outcome = verify_reply(timed_out().saga, reply)
    assert isinstance(outcome, Transition)
    assert outcome.saga.state is SagaState.ESCALATED
    assert (
        outcome.saga.error is not None and outcome.saga.error.type == ErrorType.INVALID_VERIFY_REPLY
    )
    assert outcome.saga.steps[1].status is StepStatus.OUTCOME_UNKNOWN
    (event,) = outcome.commands
    assert isinstance(event, PublishEvent) and event.name == "OrderEscalated"


def test_a_failed_or_silent_verify_escalates() -> None:
    saga = timed_out().saga
    error = ErrorInfo("Down", "db down", task_id=saga.steps[1].verify_task_id)
    failed = apply(saga, StepFailed(1, Phase.VERIFY, 1, error), LATE)
    assert isinstance(failed, Transition) and failed.saga.state is SagaState.ESCALATED
    assert isinstance(on_timer(saga, 1, LATE + timedelta(seconds=5)), Ignored)
    silent = on_timer(saga, 1, LATE + timedelta(seconds=11))
    assert isinstance(silent, Transition) and silent.saga.state is SagaState.ESCALATED
    assert silent.saga.error is not None and silent.saga.error.type == ErrorType.VERIFY_TIMEOUT


def test_a_stalled_verify_is_sent_again_keeping_its_deadline() -> None:
    saga = timed_out().saga
    resent = redrive(saga, LATE + timedelta(seconds=1), LATE + timedelta(seconds=2))
    assert isinstance(resent, Transition)
    assert only(resent).task_id == "s.1.verify.2"
    assert resent.saga.steps[1].deadline_at == saga.steps[1].deadline_at
    stale = StepSucceeded(1, Phase.VERIFY, 1, {"applied": True}, "s.1.verify.1")
    assert isinstance(apply(resent.saga, stale, LATE), Ignored)


def test_escalate_stops_until_an_operator_resolves() -> None:
    outcome = timed_out("escalate")
    assert outcome.saga.state is SagaState.ESCALATED and outcome.commands[0]
    assert outcome.saga.steps[1].status is StepStatus.OUTCOME_UNKNOWN
    saga = outcome.saga
    assert isinstance(cancel(saga, "x", LATE), Ignored)
    wrong = resolve(saga, "one", True, "x", LATE)
    assert isinstance(wrong, Ignored) and "not the one waiting" in wrong.reason
    applied = resolve(saga, "two", True, "seen in the ledger", LATE, {"ref": 1})
    assert isinstance(applied, Transition)
    assert applied.saga.state is SagaState.PENDING and applied.saga.error is None
    assert applied.saga.steps[1].result == {"ref": 1}
    assert only(applied).position == 2
    assert applied.history[0].detail == {"applied": True, "reason": "seen in the ledger"}
    not_applied = resolve(saga, "two", False, "not in the ledger", LATE)
    assert isinstance(not_applied, Transition)
    assert not_applied.saga.state is SagaState.COMPENSATING
    assert only(not_applied).position == 0  # two itself is not undone
    running = begin(new_saga("s", "order", {}, steps("escalate"), T0), T0).saga
    assert isinstance(resolve(running, "one", True, "x", T0), Ignored)


def test_a_cancel_waiting_on_an_escalated_step_keeps_its_reason() -> None:
    saga = begin(new_saga("s", "order", {}, steps("escalate"), T0), T0).saga
    saga = ok(saga, 0)
    requested = cancel(saga, "customer left", T0)
    assert isinstance(requested, Transition)
    escalated = on_timer(requested.saga, 1, LATE)
    assert isinstance(escalated, Transition)
    assert escalated.saga.error is not None and escalated.saga.error.message == "customer left"
    resolved = resolve(escalated.saga, "two", True, "it went through", LATE)
    assert isinstance(resolved, Transition)
    assert resolved.saga.state is SagaState.COMPENSATING  # cancelled: undo two, then one
    assert only(resolved).position == 1


# -- real processes --------------------------------------------------------------------------------


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sagaflow", *args],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


SLOW = {"slow_after_effect": {"b2": 4}}


@pytest.fixture(scope="module")
def unsure(stack: Stack) -> Iterator[Stack]:
    """A worker for b2's queue whose threads let a verify run beside a sleeping action."""
    worker = stack.start_worker(
        WorkerSpec("unsure", "tests.services", ["unsure"], pool="threads", concurrency=4)
    )
    try:
        yield stack
    finally:
        stack.group.stop_worker(worker)


def time_out_then_wait(stack: Stack, saga_id: str, done: SagaState) -> SagaRecord:
    """Let b2 do its effect and time out, then wait for the verify's answer to move the saga.

    The sweep runs only until b2 has timed out: the verify's own deadline is b2's 0.5 s, and
    a sweep past it on a busy machine would escalate with VerifyTimeout before the answer."""
    poll(
        lambda: ("b2", "action") in stack.executions(saga_id),
        30,
        lambda: f"b2 of {saga_id} never did its effect{stack.logs_hint()}",
    )
    sweep_until_timed_out(stack, saga_id)
    return wait_for_state(stack, saga_id, done)


def test_verify_finds_the_effect_and_the_saga_goes_on(unsure: Stack) -> None:
    stack = unsure
    saga_id = stack.start("verifying", SLOW)
    saga = time_out_then_wait(stack, saga_id, SagaState.COMPLETED)
    assert saga.steps[1].result == {"checked": f"{saga_id}:b2"}
    assert stack.executions(saga_id) == [
        ("a1", "action"),
        ("b2", "action"),
        ("b2", "verify"),
        ("a3", "action"),
    ]
    events = [h.event for h in stack.store.history(saga_id)]
    assert HistoryEvent.STEP_TIMED_OUT in events and HistoryEvent.STEP_VERIFIED in events


def test_verify_says_not_applied_and_the_steps_before_are_compensated(unsure: Stack) -> None:
    stack = unsure
    saga_id = stack.start("verifying", {**SLOW, "verify_answer": {"b2": {"applied": False}}})
    saga = time_out_then_wait(stack, saga_id, SagaState.FAILED)
    assert saga.error is not None and saga.error.type == ErrorType.STEP_TIMEOUT
    assert [s.status for s in saga.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.FAILED,
        StepStatus.SKIPPED,
    ]
    assert ("b2", "compensation") not in stack.executions(saga_id)


def test_an_invalid_verify_answer_escalates_and_resolve_carries_on(unsure: Stack) -> None:
    stack = unsure
    saga_id = stack.start("verifying", {**SLOW, "verify_answer": {"b2": "yes"}})
    saga = time_out_then_wait(stack, saga_id, SagaState.ESCALATED)
    assert saga.error is not None and saga.error.type == ErrorType.INVALID_VERIFY_REPLY
    with pytest.raises(InvalidOperation, match="a reason is required"):
        stack.client.resolve(saga_id, "b2", True, " ")
    version = stack.client.resolve(saga_id, "b2", True, "found it by hand", {"ref": "x"})
    saga = stack.client.wait(saga_id, timeout=60, newer_than=version)
    assert saga.state is SagaState.COMPLETED and saga.error is None
    assert saga.steps[1].result == {"ref": "x"}
    assert [e.name for e in stack.store.events(saga_id)] == [
        "VerifyingEscalated",
        "VerifyingCompleted",
    ]


def test_escalate_then_resolve_not_applied_from_the_cli(unsure: Stack) -> None:
    stack = unsure
    saga_id = stack.start("escalating", SLOW)
    sweep_until(stack, saga_id, SagaState.ESCALATED)
    status = json.loads(cli(stack, "status", saga_id, "--json").stdout)
    assert status["state"] == "escalated"
    assert status["steps"][1]["status"] == "outcome_unknown"
    assert status["steps"][1]["on_timeout"] == "escalate"
    missing = cli(stack, "resolve", saga_id, "b2", "--reason", "x")
    assert missing.returncode == 2 and "--applied or --not-applied" in missing.stderr
    result = cli(
        stack, "resolve", saga_id, "b2", "--not-applied", "--reason", "no charge", "--wait"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    saga = stack.store.get(saga_id)
    assert saga.state is SagaState.FAILED
    assert stack.executions(saga_id)[-1] == ("a1", "compensation")
    history = json.loads(cli(stack, "history", saga_id, "--json").stdout)
    resolved = [h for h in history if h["event"] == HistoryEvent.STEP_RESOLVED]
    assert resolved[0]["detail"] == {"applied": False, "reason": "no charge"}
    again = cli(stack, "resolve", saga_id, "b2", "--applied", "--reason", "x")
    assert again.returncode == 1 and "only an escalated saga is resolved" in again.stderr
