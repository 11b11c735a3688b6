"""The recovery sweep: stalled sagas are re-driven from the store, lost events republished."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from sagaflow import SagaState, Step
from sagaflow.core.definitions import Phase
from sagaflow.core.machine import (
    DispatchTask,
    Ignored,
    StepSucceeded,
    Transition,
    apply,
    begin,
    new_saga,
    redrive,
)
from sagaflow.core.vocabulary import HistoryEvent
from sagaflow.devstack.processes import WorkerSpec
from sagaflow.messaging.orchestrator_app import create_orchestrator_app, orchestrator_of
from sagaflow.store.schema import events
from tests.conftest import Stack

ON_EVERY_BROKER = True  # its stack tests run on Redis, RabbitMQ and the embedded broker

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
STEPS = [
    Step("one", "svc.act", "svc.undo", queue="q"),
    Step("two", "svc.act", "svc.undo", queue="q"),
]


def running() -> Transition:
    return begin(new_saga("s-1", "trip", {}, STEPS, T0), T0)


# -- the pure decision ---------------------------------------------------------------------------


def test_redrive_sends_a_new_attempt_of_the_waiting_step() -> None:
    saga = running().saga
    later = T0 + timedelta(minutes=10)
    outcome = redrive(saga, stalled_before=later - timedelta(minutes=5), now=later)
    assert isinstance(outcome, Transition)
    (command,) = outcome.commands
    assert isinstance(command, DispatchTask)
    assert command.attempt == 2 and command.task_id == "s-1.0.action.2"
    assert command.context["idempotency_key"] == "s-1:one"  # the same key as attempt 1
    assert outcome.saga.steps[0].attempts == 2
    assert outcome.saga.updated_at == later
    assert [h.event for h in outcome.history] == [
        HistoryEvent.STEP_REDRIVEN,
        HistoryEvent.STEP_DISPATCHED,
    ]
    # The first attempt's late outcome no longer counts; the new one does.
    stale = apply(outcome.saga, StepSucceeded(0, Phase.ACTION, 1, {}, "s-1.0.action.1"), later)
    assert isinstance(stale, Ignored)
    fresh = apply(outcome.saga, StepSucceeded(0, Phase.ACTION, 2, {}, "s-1.0.action.2"), later)
    assert isinstance(fresh, Transition)


def test_redrive_leaves_a_saga_that_moved_recently_alone() -> None:
    saga = running().saga
    assert isinstance(redrive(saga, stalled_before=T0, now=T0 + timedelta(seconds=1)), Ignored)
    # After one sweep re-drove it, a second sweep with the same cutoff finds it fresh.
    first = redrive(saga, stalled_before=T0 + timedelta(minutes=1), now=T0 + timedelta(minutes=2))
    assert isinstance(first, Transition)
    second = redrive(
        first.saga, stalled_before=T0 + timedelta(minutes=1), now=T0 + timedelta(minutes=2)
    )
    assert isinstance(second, Ignored)


def test_redrive_resends_a_waiting_compensation() -> None:
    saga = running().saga
    done = apply(saga, StepSucceeded(0, Phase.ACTION, 1, {"r": 1}, "s-1.0.action.1"), T0)
    assert isinstance(done, Transition)
    from sagaflow.core.machine import ErrorInfo, StepFailed

    failed = apply(
        done.saga, StepFailed(1, Phase.ACTION, 1, ErrorInfo("E", "x", task_id="s-1.1.action.1")), T0
    )
    assert isinstance(failed, Transition) and failed.saga.state is SagaState.COMPENSATING
    outcome = redrive(failed.saga, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2))
    assert isinstance(outcome, Transition)
    (command,) = outcome.commands
    assert isinstance(command, DispatchTask)
    assert command.phase is Phase.COMPENSATION and command.attempt == 2
    assert command.context["result"] == {"r": 1}


def test_redrive_ignores_finished_sagas() -> None:
    saga = replace(running().saga, state=SagaState.COMPLETED)
    assert isinstance(redrive(saga, T0 + timedelta(hours=1), T0 + timedelta(hours=2)), Ignored)


# -- against real workers ----------------------------------------------------------------------


def test_a_lost_step_message_is_sent_again_and_the_saga_completes(stack: Stack) -> None:
    saga_id = stack.start("detour", {})
    stack.wait_dispatched(saga_id, 1)
    # The message is lost: taken off the queue and dropped before any worker saw it.
    with stack.client.app.connection_for_write() as conn:
        queue = conn.SimpleQueue("later")
        message = queue.get(timeout=10)
        args, _kwargs, _embed = message.payload  # Celery message protocol 2
        assert args[0]["saga_id"] == saga_id
        message.ack()
        queue.close()
    stack.age(saga_id, timedelta(hours=1))
    later = stack.start_worker(WorkerSpec("later", "tests.services", ["later"]))
    try:
        result = stack.cli("recover", "--older-than", "600", "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert {"saga_id": saga_id, "step": "l2", "state": "pending"} in report["redriven"]
        saga = stack.wait_one(saga_id)
    finally:
        stack.group.stop_worker(later)
    assert saga.state is SagaState.COMPLETED
    assert saga.steps[1].attempts == 2
    # The lost attempt never ran; the re-driven one ran once.
    assert stack.executions(saga_id) == [("a1", "action"), ("l2", "action"), ("a3", "action")]
    assert HistoryEvent.STEP_REDRIVEN in [h.event for h in stack.store.history(saga_id)]


def test_concurrent_sweeps_redrive_a_saga_once(stack: Stack) -> None:
    saga_id = stack.start("orphan", {})
    stack.wait_dispatched(saga_id, 1)
    stack.age(saga_id, timedelta(hours=1))
    orchestrators = [orchestrator_of(create_orchestrator_app(stack.settings)) for _ in range(4)]
    barrier = threading.Barrier(len(orchestrators))
    reports = []

    def sweep(orchestrator: object) -> None:
        barrier.wait()
        reports.append(orchestrator.recover(stalled_for=600))  # type: ignore[attr-defined]

    threads = [threading.Thread(target=sweep, args=(o,)) for o in orchestrators]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    redriven = [r for report in reports for r in report.redriven if r[0] == saga_id]
    assert len(redriven) == 1
    assert stack.store.get(saga_id).steps[1].attempts == 2


def test_an_outcome_event_whose_publishing_was_lost_is_published(stack: Stack) -> None:
    saga = stack.wait_one(stack.start("dynamic", {"n": 1}))
    (recorded,) = stack.store.events(saga.saga_id)
    # As if the orchestrator died between commit and publish.
    with stack.store.engine.begin() as conn:
        conn.execute(
            events.update()
            .where(events.c.id == recorded.id)
            .values(published_at=None, created_at=recorded.created_at - timedelta(hours=1))
        )
    orchestrator = orchestrator_of(create_orchestrator_app(stack.settings))
    report = orchestrator.recover(stalled_for=600)
    assert (saga.saga_id, "DynamicCompleted") in report.republished
    (event,) = stack.store.events(saga.saga_id)
    assert event.published_at is not None
