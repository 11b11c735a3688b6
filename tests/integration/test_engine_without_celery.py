"""The engine on its own: a real SQLite store, the recording dispatcher and publisher, no Celery.

The Orchestrator is built from a store, a registry, a Dispatcher and an EventPublisher; here the
test plays the service workers by feeding each dispatched step's outcome back by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sagaflow.core.definitions import Phase, SagaState, StepStatus, load_definitions
from sagaflow.core.machine import DispatchTask, ErrorInfo, StepFailed, StepSucceeded
from sagaflow.engine import Orchestrator, RecordingDispatcher, RecordingPublisher
from sagaflow.store.factory import open_store
from sagaflow.store.quarantine import QuarantineStore


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[Orchestrator, RecordingDispatcher]]:
    store = open_store(f"sqlite:///{tmp_path / 'engine.db'}")
    store.upgrade()
    dispatcher = RecordingDispatcher()
    orchestrator = Orchestrator(
        dispatcher=dispatcher,
        store=store,
        registry=load_definitions("tests.sagas"),
        publisher=RecordingPublisher(),
        queue="sagaflow",
        quarantine=QuarantineStore(store),
    )
    yield orchestrator, dispatcher
    store.dispose()


def succeed(orchestrator: Orchestrator, command: DispatchTask) -> bool:
    event = StepSucceeded(
        command.position, command.phase, command.attempt, {"ok": True}, command.task_id
    )
    return orchestrator.handle(command.saga_id, event)


def fail(orchestrator: Orchestrator, command: DispatchTask) -> bool:
    error = ErrorInfo(type="Declined", message="no", task_id=command.task_id, non_retryable=True)
    event = StepFailed(command.position, command.phase, command.attempt, error)
    return orchestrator.handle(command.saga_id, event)


def published(orchestrator: Orchestrator) -> list[str]:
    publisher = orchestrator.publisher
    assert isinstance(publisher, RecordingPublisher)
    return [name for name, _ in publisher.published]


def test_a_saga_completes_with_every_step_dispatched_in_order(
    engine: tuple[Orchestrator, RecordingDispatcher],
) -> None:
    orchestrator, dispatcher = engine
    saga_id = orchestrator.start("plain-1", "trip", {"via": "engine"})
    for _ in range(4):
        assert succeed(orchestrator, dispatcher.dispatched[-1])
    steps = [(c.position, c.phase) for c in dispatcher.dispatched]
    assert steps == [(i, Phase.ACTION) for i in range(4)]
    saga = orchestrator.store.get(saga_id)
    assert saga.state is SagaState.COMPLETED
    assert [s.result for s in saga.steps] == [{"ok": True}] * 4
    assert published(orchestrator) == ["TripCompleted"]


def test_a_failed_step_compensates_the_completed_ones_in_reverse(
    engine: tuple[Orchestrator, RecordingDispatcher],
) -> None:
    orchestrator, dispatcher = engine
    saga_id = orchestrator.start("plain-2", "trip", {})
    assert succeed(orchestrator, dispatcher.dispatched[-1])
    assert succeed(orchestrator, dispatcher.dispatched[-1])
    assert fail(orchestrator, dispatcher.dispatched[-1])
    for _ in range(2):
        assert succeed(orchestrator, dispatcher.dispatched[-1])
    undone = [(c.position, c.phase) for c in dispatcher.dispatched[3:]]
    assert undone == [(1, Phase.COMPENSATION), (0, Phase.COMPENSATION)]
    saga = orchestrator.store.get(saga_id)
    assert saga.state is SagaState.FAILED
    assert [s.status for s in saga.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATED,
        StepStatus.FAILED,
        StepStatus.SKIPPED,
    ]


def test_a_duplicate_or_stray_outcome_changes_nothing(
    engine: tuple[Orchestrator, RecordingDispatcher],
) -> None:
    orchestrator, dispatcher = engine
    saga_id = orchestrator.start("plain-3", "trip", {})
    first = dispatcher.dispatched[-1]
    assert succeed(orchestrator, first)
    before = orchestrator.store.get(saga_id)
    assert not succeed(orchestrator, first)  # the same report again
    assert not fail(orchestrator, first)  # a contradicting late report
    after = orchestrator.store.get(saga_id)
    assert after.version == before.version
    assert len(dispatcher.dispatched) == 2
    assert orchestrator.store.ignored(saga_id).count == 2


def test_recovery_redrives_a_step_whose_message_was_lost(
    engine: tuple[Orchestrator, RecordingDispatcher],
) -> None:
    orchestrator, dispatcher = engine
    saga_id = orchestrator.start("plain-4", "trip", {})
    lost = dispatcher.dispatched[-1]  # never delivered: no outcome comes back
    report = orchestrator.recover(stalled_for=0)
    assert report.redriven == [(saga_id, "a1", SagaState.PENDING.value)]
    again = dispatcher.dispatched[-1]
    assert (again.position, again.phase) == (0, Phase.ACTION)
    assert again.attempt == lost.attempt + 1
    assert again.task_id != lost.task_id
    # Only the new attempt's outcome counts; the lost one, if it turns up, is ignored.
    assert not succeed(orchestrator, lost)
    assert succeed(orchestrator, again)
    assert orchestrator.store.get(saga_id).steps[0].status is StepStatus.COMPLETED
