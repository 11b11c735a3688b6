"""The saga engine end to end: real orchestrator and service worker processes, real broker and
store (Redis + PostgreSQL, and the embedded filesystem broker + SQLite)."""

from __future__ import annotations

import pytest

from sagaflow import SagaState, StepStatus
from sagaflow.core.protocol import STEP_FAILED_TASK, STEP_SUCCEEDED_TASK, outcome_kwargs
from sagaflow.core.vocabulary import ErrorType, HistoryEvent
from sagaflow.devstack.processes import WorkerSpec
from tests.conftest import Stack, poll

ON_EVERY_BROKER = True  # its stack tests run on Redis, RabbitMQ and the embedded broker

TRIP = ["a1", "b2", "a3", "b4"]


def forward(*steps: str) -> list[tuple[str, str]]:
    return [(s, "action") for s in steps]


def backward(*steps: str) -> list[tuple[str, str]]:
    return [(s, "compensation") for s in steps]


def test_happy_path_runs_every_step_once_in_order(stack: Stack) -> None:
    saga_id = stack.start("trip", {"order": 1})
    saga = stack.wait_one(saga_id)

    assert saga.state is SagaState.COMPLETED
    assert [s.status for s in saga.steps] == [StepStatus.COMPLETED] * 4
    assert stack.executions(saga_id) == forward(*TRIP)
    # Each step saw the results of the steps before it, by name.
    assert [s.result["saw"] for s in saga.steps] == [[], ["a1"], ["a1", "b2"], ["a1", "a3", "b2"]]
    assert all(s.attempts == 1 and s.task_id and saga_id in s.task_id for s in saga.steps)
    events = stack.store.events(saga_id)
    assert [e.name for e in events] == ["TripCompleted"]
    assert events[0].published_at is not None
    assert [h.event for h in stack.store.history(saga_id)][-1] == HistoryEvent.SAGA_COMPLETED


@pytest.mark.parametrize("failing", range(4))
def test_failure_at_each_position_compensates_in_exact_reverse_order(
    stack: Stack, failing: int
) -> None:
    failed_step = TRIP[failing]
    saga_id = stack.start("trip", {"fail_at": [failed_step]})
    saga = stack.wait_one(saga_id)

    assert saga.state is SagaState.FAILED
    assert saga.error is not None and saga.error.type == "StepRefused"
    assert f"step {failed_step} refused" in saga.error.message
    done = TRIP[:failing]
    # Recorded by the service tasks themselves: forward up to the failure, then one
    # compensation at a time in reverse; the failed step itself is not compensated.
    assert stack.executions(saga_id) == forward(*done, failed_step) + backward(*reversed(done))
    statuses = [s.status for s in saga.steps]
    assert statuses == (
        [StepStatus.COMPENSATED] * failing
        + [StepStatus.FAILED]
        + [StepStatus.SKIPPED] * (3 - failing)
    )
    # Each compensation was handed its own step's result.
    for step in saga.steps[:failing]:
        assert step.compensated_at is not None and step.compensation_attempts == 1
    assert [e.name for e in stack.store.events(saga_id)] == ["TripFailed"]


def test_compensation_receives_its_steps_result(stack: Stack) -> None:
    saga_id = stack.start("trip", {"fail_at": ["b2"]})
    stack.wait_one(saga_id)
    import sqlalchemy as sa

    from tests.services import effects_engine_at, executions

    engine = effects_engine_at(stack.effects_url)
    with engine.connect() as conn:
        context = conn.execute(
            sa.select(executions.c.context).where(
                executions.c.saga_id == saga_id, executions.c.phase == "compensation"
            )
        ).scalar_one()
    engine.dispose()
    assert context["step"] == "a1"
    assert context["result"] == {"step": "a1", "saw": []}
    assert context["idempotency_key"] == f"{saga_id}:a1:compensation"


def test_step_without_compensation_is_passed_over(stack: Stack) -> None:
    saga_id = stack.start("partial", {"fail_at": ["a3"]})
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.FAILED
    assert stack.executions(saga_id) == forward("a1", "b2", "a3") + backward("a1")
    assert [s.status for s in saga.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.COMPLETED,
        StepStatus.FAILED,
    ]


def test_failing_compensation_stops_and_waits_for_an_operator(stack: Stack) -> None:
    saga_id = stack.start("trip", {"fail_at": ["a3"], "fail_compensation_at": ["b2"]})
    saga = stack.wait_one(saga_id)

    assert saga.state is SagaState.COMPENSATION_FAILED
    assert saga.error is not None and saga.error.type == "CompensationRefused"
    # a1 is NOT compensated: nothing runs after a compensation failed.
    assert stack.executions(saga_id) == forward("a1", "b2", "a3") + backward("b2")
    assert saga.steps[1].status is StepStatus.COMPENSATION_FAILED
    assert saga.steps[0].status is StepStatus.COMPLETED
    assert [e.name for e in stack.store.events(saga_id)] == ["TripCompensationFailed"]


def test_compensate_on_failure_undoes_the_failed_step_too(stack: Stack) -> None:
    saga_id = stack.start("undo_failure_too", {"fail_at": ["b2"]})
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.FAILED
    assert stack.executions(saga_id) == forward("a1", "b2") + backward("b2", "a1")


def test_steps_can_depend_on_input(stack: Stack) -> None:
    saga_id = stack.start("dynamic", {"n": 5})
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.COMPLETED
    assert stack.executions(saga_id) == forward("s1", "s2", "s3", "s4", "s5")


def test_many_sagas_at_once_each_run_exactly_once(stack: Stack) -> None:
    ids = [stack.start("trip", {"fail_at": ["a3"]} if i % 3 == 0 else {}) for i in range(30)]
    sagas = stack.wait(ids, timeout=120)
    for i, saga in enumerate(sagas):
        if i % 3 == 0:
            assert saga.state is SagaState.FAILED
            assert stack.executions(saga.saga_id) == forward("a1", "b2", "a3") + backward(
                "b2", "a1"
            )
        else:
            assert saga.state is SagaState.COMPLETED
            assert stack.executions(saga.saga_id) == forward(*TRIP)


# -- bad input ---------------------------------------------------------------------------------


def test_unknown_saga_type_is_recorded_as_rejected(stack: Stack) -> None:
    saga_id = stack.start("no_such_saga", {"x": 1})
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.REJECTED
    assert saga.error is not None and saga.error.type == "UnknownSagaType"
    assert "unknown saga type 'no_such_saga'" in saga.error.message
    assert "trip" in saga.error.message  # the registered types are listed
    assert saga.data == {"x": 1}
    assert [h.event for h in stack.store.history(saga_id)] == [
        HistoryEvent.SAGA_REQUESTED,
        HistoryEvent.SAGA_REJECTED,
    ]


def test_a_definition_that_crashes_is_recorded_as_rejected(stack: Stack) -> None:
    saga = stack.wait_one(stack.start("broken", {"no_items": True}))
    assert saga.state is SagaState.REJECTED
    assert saga.error is not None and saga.error.type == "KeyError"
    assert "items" in saga.error.message


def test_results_json_cannot_store_as_is_are_cleaned_not_lost(stack: Stack) -> None:
    saga = stack.wait_one(stack.start("dynamic", {"n": 2, "odd_result": True}))
    assert saga.state is SagaState.COMPLETED
    assert saga.steps[0].result == {
        "amount": "12.50",
        "at": "2026-01-02T03:04:05+00:00",
        "id": "00000000-0000-0000-0000-000000000007",
        "raw": "AQI=",
        "nan": None,
        "nul": "ab",
    }


def test_a_result_kombu_cannot_encode_does_not_fail_a_step_that_ran(stack: Stack) -> None:
    saga = stack.wait_one(stack.start("dynamic", {"n": 2, "unencodable_result": True}))
    assert saga.state is SagaState.COMPLETED
    assert saga.steps[0].result["tags"] == ["x"]
    assert saga.steps[0].result["thing"].startswith("<object object at")


def test_input_the_definition_rejects_is_recorded(stack: Stack) -> None:
    saga_id = stack.start("dynamic", {"n": "many"})
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.REJECTED
    assert saga.error is not None and "n must be an integer" in saga.error.message


def test_non_object_input_from_a_raw_producer_is_recorded(stack: Stack) -> None:
    saga_id = "raw-producer-list-input"
    stack.client.app.send_task(
        "sagaflow.start",
        kwargs={"saga_id": saga_id, "saga_type": "trip", "data": [1, 2, 3]},
        queue=stack.settings.queue,
    )
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.REJECTED
    assert saga.error is not None and "must be a JSON object" in saga.error.message
    assert saga.data == {"input": [1, 2, 3]}


def test_pickle_messages_are_refused(stack: Stack) -> None:
    pickled = "pickled-start-must-not-run"
    stack.client.app.send_task(
        "sagaflow.start",
        kwargs={"saga_id": pickled, "saga_type": "trip", "data": {}},
        queue=stack.settings.queue,
        serializer="pickle",
    )
    # A JSON start sent after it completes, so the pickled one has been seen and refused.
    barrier = stack.wait_one(stack.start("dynamic", {"n": 1}))
    assert barrier.state is SagaState.COMPLETED
    assert stack.store.load(pickled) is None


def test_step_task_no_worker_knows_fails_the_saga_clearly(stack: Stack) -> None:
    saga_id = stack.start("typo", {})
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.FAILED
    assert saga.error is not None and saga.error.type == ErrorType.NOT_REGISTERED
    assert "svc.no_such_task" in saga.error.message and "svc_b" in saga.error.message
    assert stack.executions(saga_id) == forward("a1") + backward("a1")


def test_failure_on_a_worker_without_sagaflow_still_fails_the_saga(stack: Stack) -> None:
    saga_id = stack.start("plain", {})
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.FAILED
    assert saga.error is not None and saga.error.type == ErrorType.UNKNOWN_ERROR
    assert saga.steps[1].task_id is not None and saga.steps[1].task_id in saga.error.message
    assert stack.executions(saga_id) == forward("a1") + backward("a1")


def test_step_on_a_queue_nobody_consumes_shows_where_it_waits(stack: Stack) -> None:
    saga_id = stack.start("orphan", {})

    def waiting() -> bool:
        saga = stack.store.load(saga_id)
        return bool(saga and len(saga.steps) > 1 and saga.steps[1].status is StepStatus.EXECUTING)

    poll(waiting, 30, lambda: f"saga {saga_id} never dispatched its second step")
    saga = stack.client.get(saga_id)
    assert saga.state is SagaState.PENDING
    assert saga.steps[1].queue == "nobody"
    from sagaflow.errors import SagaTimeout

    with pytest.raises(SagaTimeout, match="step 'lost' is executing \\(queue 'nobody'\\)"):
        stack.client.wait(saga_id, timeout=0.2)


# -- duplicates, late and forged outcomes ------------------------------------------------------


def _send_outcome(
    stack: Stack,
    saga_id: str,
    position: int,
    phase: str,
    attempt: int,
    step: str,
    error: dict[str, str] | None = None,
) -> None:
    kwargs = outcome_kwargs(saga_id, position, phase, attempt, step)
    if error is None:
        stack.client.app.send_task(
            STEP_SUCCEEDED_TASK, args=[{"forged": True}], kwargs=kwargs, queue=stack.settings.queue
        )
    else:
        stack.client.app.send_task(
            STEP_FAILED_TASK, kwargs={**kwargs, "error": error}, queue=stack.settings.queue
        )


def test_duplicate_and_late_outcomes_change_nothing(stack: Stack) -> None:
    completed = stack.wait_one(stack.start("trip", {}))
    failed = stack.wait_one(stack.start("trip", {"fail_at": ["a3"]}))
    before = {
        s.saga_id: (s.version, stack.executions(s.saga_id), len(stack.store.history(s.saga_id)))
        for s in (completed, failed)
    }
    boom = {"type": "Boom", "message": "late failure"}
    for saga in (completed, failed):
        for step in saga.steps:
            _send_outcome(stack, saga.saga_id, step.position, "action", 1, step.name)
            _send_outcome(stack, saga.saga_id, step.position, "action", 1, step.name, boom)
            _send_outcome(stack, saga.saga_id, step.position, "compensation", 1, step.name)
    for saga in (completed, failed):
        stack.wait_ignored(saga.saga_id, 12)
        after = stack.store.get(saga.saga_id)
        assert after.state is saga.state
        assert after.version == before[saga.saga_id][0]
        assert stack.executions(saga.saga_id) == before[saga.saga_id][1]
        assert [s.status for s in after.steps] == [s.status for s in saga.steps]


def test_out_of_order_and_forged_outcomes_on_a_running_saga_are_ignored(stack: Stack) -> None:
    # The second step waits on a queue nobody consumes, so the saga stays running.
    saga_id = stack.start("orphan", {})
    stack.wait_dispatched(saga_id, 1)
    # A success for the running step from some other task (wrong parent), a late success for
    # the finished first step, an outcome for a step that does not exist, a stale attempt.
    _send_outcome(stack, saga_id, 1, "action", 1, "lost")
    _send_outcome(stack, saga_id, 0, "action", 1, "a1")
    _send_outcome(stack, saga_id, 7, "action", 1, "nope")
    _send_outcome(stack, saga_id, 1, "action", 5, "lost", {"type": "X", "message": "stale"})
    ignored = stack.wait_ignored(saga_id, 4)
    reasons = " | ".join(str(h.detail["reason"]) for h in ignored)
    assert "not by" in reasons  # the forged success named the wrong task
    assert "not executing" in reasons
    assert "no step at position 7" in reasons
    assert "not the current one" in reasons
    saga = stack.store.get(saga_id)
    assert saga.state is SagaState.PENDING
    assert saga.steps[1].status is StepStatus.EXECUTING
    assert stack.executions(saga_id) == forward("a1")


def test_outcome_for_an_unknown_saga_is_dropped_without_a_trace(stack: Stack) -> None:
    _send_outcome(stack, "no-such-saga", 0, "action", 1, "a1")
    barrier = stack.wait_one(stack.start("dynamic", {"n": 1}))
    assert barrier.state is SagaState.COMPLETED
    assert stack.store.load("no-such-saga") is None


def test_two_orchestrators_and_duplicated_callbacks_never_run_anything_twice(
    stack: Stack,
) -> None:
    second = stack.start_worker(
        WorkerSpec(
            "orchestrator2",
            "sagaflow.worker",
            [stack.settings.queue],
            pool="threads",
            concurrency=4,
        )
    )
    try:
        ids = [stack.start("trip", {"fail_at": ["b4"]} if i % 2 else {}) for i in range(40)]
        # Spray duplicate success callbacks for first steps while the sagas run: whichever
        # orchestrator takes them, they must be ignored (wrong parent task / already applied).
        for saga_id in ids:
            _send_outcome(stack, saga_id, 0, "action", 1, "a1")
        sagas = stack.wait(ids, timeout=120)
    finally:
        stack.group.stop_worker(second)
    for i, saga in enumerate(sagas):
        runs = stack.executions(saga.saga_id)
        if i % 2:
            assert saga.state is SagaState.FAILED
            assert runs == forward(*TRIP) + backward("a3", "b2", "a1")
        else:
            assert saga.state is SagaState.COMPLETED
            assert runs == forward(*TRIP)
        history = [h.event for h in stack.store.history(saga.saga_id)]
        assert history.count(HistoryEvent.STEP_COMPLETED) == (3 if i % 2 else 4)
