"""The transitions every saga entry point is built from: dispatching an action or a
compensation, a step that succeeded or failed, compensating backwards, escalating.

Pure like the machine (which uses these): no Celery, no SQL, no clock.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from sagaflow.core.records import (
    JSON,
    DispatchTask,
    ErrorInfo,
    HistoryEntry,
    PublishEvent,
    SagaRecord,
    StepRecord,
    Transition,
    event_name,
    idempotency_key,
    task_id_for,
)
from sagaflow.core.vocabulary import (
    ErrorType,
    HistoryEvent,
    Phase,
    SagaOutcome,
    SagaState,
    StepStatus,
)

# A retriable step that failed is sent again after a delay kept in the store (the recovery
# sweep sends it), not in a broker ETA: it survives a broker restart and never outlives a
# visibility timeout. The delay doubles from RETRY_BACKOFF up to RETRY_BACKOFF_MAX seconds.
RETRY_BACKOFF = 1.0
RETRY_BACKOFF_MAX = 300.0


def retry_delay(attempts: int) -> float:
    """Seconds before a retriable step that failed `attempts` times is sent again."""
    return float(min(RETRY_BACKOFF * 2 ** min(max(attempts - 1, 0), 30), RETRY_BACKOFF_MAX))


def with_step(saga: SagaRecord, step: StepRecord) -> SagaRecord:
    steps = list(saga.steps)
    steps[step.position] = step
    return replace(saga, steps=tuple(steps))


def step_context(saga: SagaRecord, step: StepRecord, phase: Phase) -> dict[str, JSON]:
    results = {
        s.name: s.result
        for s in saga.steps[: step.position]
        if s.status in (StepStatus.COMPLETED, StepStatus.COMPENSATING, StepStatus.COMPENSATED)
    }
    context: dict[str, JSON] = {
        "saga_id": saga.saga_id,
        "saga_type": saga.saga_type,
        "step": step.name,
        "data": saga.data,
        "results": results,
        # A verify task checks for the action's effect, recorded under the action's key.
        "idempotency_key": idempotency_key(
            saga.saga_id, step.name, Phase.ACTION if phase is Phase.VERIFY else phase
        ),
    }
    if phase is Phase.COMPENSATION:
        context["result"] = step.result
        context["error"] = step.error.to_json() if step.error else None
    if phase is Phase.VERIFY:
        context["verifying"] = {"task_id": step.task_id, "attempt": step.attempts}
        return context
    policy = step.retry if phase is Phase.ACTION else step.compensation_retry
    if policy:
        context["retry"] = policy  # applied by the service with Celery's retry (SagaStepTask)
    return context


def dispatch_action(
    saga: SagaRecord,
    position: int,
    now: datetime,
    history: tuple[HistoryEntry, ...],
    changed: frozenset[int],
) -> Transition:
    step = saga.steps[position]
    attempt = step.attempts + 1
    task_id = task_id_for(saga.saga_id, position, Phase.ACTION, attempt)
    deadline = now + timedelta(seconds=step.timeout) if step.timeout else None
    step = replace(
        step,
        status=StepStatus.EXECUTING,
        attempts=attempt,
        task_id=task_id,
        started_at=now,
        deadline_at=deadline,
        error=None,
    )
    saga = replace(with_step(saga, step), current_step=position, updated_at=now)
    command = DispatchTask(
        saga_id=saga.saga_id,
        position=position,
        phase=Phase.ACTION,
        attempt=attempt,
        task_name=step.action,
        queue=step.queue,
        task_id=task_id,
        context=step_context(saga, step, Phase.ACTION),
    )
    entry = HistoryEntry(
        HistoryEvent.STEP_DISPATCHED,
        saga.state,
        saga.state,
        step.name,
        {"task": step.action, "queue": step.queue, "task_id": task_id, "attempt": attempt},
    )
    return Transition(saga, (command,), (*history, entry), changed | {position})


def tries_detail(tries: int) -> dict[str, JSON] | None:
    return {"tries": tries} if tries > 1 else None


def action_succeeded(
    saga: SagaRecord, step: StepRecord, result: JSON, now: datetime, tries: int = 1
) -> Transition:
    step = replace(step, status=StepStatus.COMPLETED, result=result, finished_at=now)
    saga = replace(with_step(saga, step), updated_at=now)
    entry = HistoryEntry(
        HistoryEvent.STEP_COMPLETED, saga.state, saga.state, step.name, tries_detail(tries)
    )
    if step.pivot:
        entry = replace(entry, detail={**(entry.detail or {}), "pivot": True})
    if saga.cancel_requested_at is not None:
        # The step the cancel waited for is done: undo it and everything before it.
        compensating = replace(saga, state=SagaState.COMPENSATING)
        started = HistoryEntry(
            HistoryEvent.COMPENSATION_STARTED,
            SagaState.PENDING,
            SagaState.COMPENSATING,
            step.name,
            {"cause": "cancelled"},
        )
        return compensate_from(
            compensating, step.position, now, (entry, started), frozenset({step.position})
        )
    following = step.position + 1
    if following < len(saga.steps):
        return dispatch_action(saga, following, now, (entry,), frozenset({step.position}))
    done = replace(saga, state=SagaState.COMPLETED, current_step=None, finished_at=now)
    finished = HistoryEntry(HistoryEvent.SAGA_COMPLETED, SagaState.PENDING, SagaState.COMPLETED)
    publish = PublishEvent(event_name(saga.saga_type, SagaOutcome.COMPLETED), event_payload(done))
    return Transition(done, (publish,), (entry, finished), frozenset({step.position}))


def action_failed(
    saga: SagaRecord, step: StepRecord, error: ErrorInfo, now: datetime, tries: int = 1
) -> Transition:
    if step.retriable:
        return retriable_failed(saga, step, error, now, tries)
    step = replace(step, status=StepStatus.FAILED, error=error, finished_at=now)
    steps = list(saga.steps)
    steps[step.position] = step
    changed = {step.position}
    for later in saga.steps[step.position + 1 :]:
        steps[later.position] = replace(later, status=StepStatus.SKIPPED)
        changed.add(later.position)
    # A saga being stopped (cancel, deadline) keeps that as its error; the step keeps its own.
    stop = saga.error if saga.cancel_requested_at is not None else None
    saga = replace(
        saga, steps=tuple(steps), state=SagaState.COMPENSATING, error=stop or error, updated_at=now
    )
    history = (
        HistoryEntry(
            HistoryEvent.STEP_FAILED,
            SagaState.PENDING,
            SagaState.PENDING,
            step.name,
            {"error": error.to_json(), **(tries_detail(tries) or {})},
        ),
        HistoryEntry(
            HistoryEvent.COMPENSATION_STARTED, SagaState.PENDING, SagaState.COMPENSATING, step.name
        ),
    )
    start = step.position if step.compensate_on_failure else step.position - 1
    return compensate_from(saga, start, now, history, frozenset(changed))


def retriable_failed(
    saga: SagaRecord, step: StepRecord, error: ErrorInfo, now: datetime, tries: int
) -> Transition:
    """A retriable step is never compensated: it is sent again after a delay, unless its
    error says retrying cannot help; then an operator decides."""
    failed = HistoryEntry(
        HistoryEvent.STEP_FAILED,
        saga.state,
        saga.state,
        step.name,
        {"error": error.to_json(), **(tries_detail(tries) or {})},
    )
    if error.non_retryable:
        step = replace(step, status=StepStatus.FAILED, error=error, finished_at=now)
        reason = "a retriable step failed with a NonRetryable error: retrying cannot help"
        return escalate(saga, step, error, now, reason, (failed,))
    delay = retry_delay(step.attempts)
    due = now + timedelta(seconds=delay)
    step = replace(
        step, status=StepStatus.WAITING_RETRY, error=error, finished_at=now, deadline_at=due
    )
    saga = replace(with_step(saga, step), updated_at=now)
    scheduled = HistoryEntry(
        HistoryEvent.STEP_RETRY_SCHEDULED,
        saga.state,
        saga.state,
        step.name,
        {"attempt": step.attempts + 1, "delay": delay, "at": due.isoformat()},
    )
    return Transition(saga, (), (failed, scheduled), frozenset({step.position}))


def dispatch_verify(
    saga: SagaRecord,
    step: StepRecord,
    now: datetime,
    history: tuple[HistoryEntry, ...],
    deadline: datetime | None,
) -> Transition:
    """Ask the step's verify task whether its action took effect."""
    task = step.verify
    assert task is not None
    attempt = step.verify_attempts + 1
    task_id = task_id_for(saga.saga_id, step.position, Phase.VERIFY, attempt)
    step = replace(
        step,
        status=StepStatus.VERIFYING,
        verify_attempts=attempt,
        verify_task_id=task_id,
        deadline_at=deadline,
    )
    saga = replace(with_step(saga, step), current_step=step.position, updated_at=now)
    command = DispatchTask(
        saga_id=saga.saga_id,
        position=step.position,
        phase=Phase.VERIFY,
        attempt=attempt,
        task_name=task,
        queue=step.queue,
        task_id=task_id,
        context=step_context(saga, step, Phase.VERIFY),
    )
    entry = HistoryEntry(
        HistoryEvent.VERIFY_DISPATCHED,
        saga.state,
        saga.state,
        step.name,
        {"task": step.verify, "queue": step.queue, "task_id": task_id, "attempt": attempt},
    )
    return Transition(saga, (command,), (*history, entry), frozenset({step.position}))


def resume(
    saga: SagaRecord,
    step: StepRecord,
    applied: bool,
    result: JSON,
    now: datetime,
    history: tuple[HistoryEntry, ...],
) -> Transition:
    """Carry on once we know whether a step whose outcome was unknown took effect: forward
    with its result if it did; if not, as a step that failed without effect (a retriable
    one is sent again)."""
    if applied:
        outcome = action_succeeded(saga, step, result, now)
    elif step.retriable:
        outcome = dispatch_action(saga, step.position, now, (), frozenset())
    else:
        error = step.error or ErrorInfo(ErrorType.NOT_APPLIED, "the step did not take effect")
        undone = replace(step, compensate_on_failure=False)
        outcome = action_failed(with_step(saga, undone), undone, error, now)
    return replace(outcome, history=(*history, *outcome.history))


def escalate(
    saga: SagaRecord,
    step: StepRecord,
    error: ErrorInfo,
    now: datetime,
    reason: str,
    history: tuple[HistoryEntry, ...],
) -> Transition:
    """Stop for an operator: `step`'s outcome is unknown or it cannot succeed by retrying."""
    stopped = replace(
        with_step(saga, step),
        state=SagaState.ESCALATED,
        current_step=step.position,
        # A cancel or a deadline keeps its reason; the step carries why it escalated.
        error=saga.error if saga.cancel_requested_at is not None else error,
        updated_at=now,
        finished_at=now,
    )
    entry = HistoryEntry(
        HistoryEvent.SAGA_ESCALATED, saga.state, SagaState.ESCALATED, step.name, {"reason": reason}
    )
    publish = PublishEvent(
        event_name(saga.saga_type, SagaOutcome.ESCALATED), event_payload(stopped)
    )
    return Transition(stopped, (publish,), (*history, entry), frozenset({step.position}))


def needs_compensation(step: StepRecord) -> bool:
    if step.compensation is None:
        return False
    if step.status is StepStatus.COMPLETED:
        return True
    return step.status is StepStatus.FAILED and step.compensate_on_failure


def deadline_exceeded(saga: SagaRecord) -> bool:
    return saga.error is not None and saga.error.type == ErrorType.DEADLINE_EXCEEDED


def compensate_from(
    saga: SagaRecord,
    position: int,
    now: datetime,
    history: tuple[HistoryEntry, ...],
    changed: frozenset[int],
) -> Transition:
    """Dispatch the compensation of the nearest step at or before `position` that needs one."""
    for candidate in reversed(saga.steps[: position + 1]):
        if not needs_compensation(candidate):
            continue
        return dispatch_compensation(saga, candidate, now, history, changed)
    # A saga stopped by its deadline failed; one stopped by an operator was cancelled.
    cancelled = saga.cancel_requested_at is not None and not deadline_exceeded(saga)
    final = SagaState.CANCELLED if cancelled else SagaState.FAILED
    failed = replace(saga, state=final, current_step=None, updated_at=now, finished_at=now)
    event = HistoryEvent.SAGA_CANCELLED if cancelled else HistoryEvent.SAGA_FAILED
    entry = HistoryEntry(event, SagaState.COMPENSATING, final)
    outcome = SagaOutcome.CANCELLED if cancelled else SagaOutcome.FAILED
    publish = PublishEvent(event_name(saga.saga_type, outcome), event_payload(failed))
    return Transition(failed, (publish,), (*history, entry), changed)


def dispatch_compensation(
    saga: SagaRecord,
    candidate: StepRecord,
    now: datetime,
    history: tuple[HistoryEntry, ...],
    changed: frozenset[int],
) -> Transition:
    attempt = candidate.compensation_attempts + 1
    task_id = task_id_for(saga.saga_id, candidate.position, Phase.COMPENSATION, attempt)
    step = replace(
        candidate,
        status=StepStatus.COMPENSATING,
        compensation_attempts=attempt,
        compensation_task_id=task_id,
        compensation_started_at=now,
    )
    updated = replace(with_step(saga, step), current_step=step.position, updated_at=now)
    assert step.compensation is not None
    command = DispatchTask(
        saga_id=saga.saga_id,
        position=step.position,
        phase=Phase.COMPENSATION,
        attempt=attempt,
        task_name=step.compensation,
        queue=step.compensation_queue,
        task_id=task_id,
        context=step_context(updated, step, Phase.COMPENSATION),
    )
    entry = HistoryEntry(
        HistoryEvent.COMPENSATION_DISPATCHED,
        saga.state,
        saga.state,
        step.name,
        {
            "task": step.compensation,
            "queue": step.compensation_queue,
            "task_id": task_id,
            "attempt": attempt,
        },
    )
    return Transition(updated, (command,), (*history, entry), changed | {step.position})


def compensation_succeeded(
    saga: SagaRecord, step: StepRecord, now: datetime, tries: int = 1
) -> Transition:
    step = replace(step, status=StepStatus.COMPENSATED, compensated_at=now)
    saga = replace(with_step(saga, step), updated_at=now)
    entry = HistoryEntry(
        HistoryEvent.STEP_COMPENSATED, saga.state, saga.state, step.name, tries_detail(tries)
    )
    return compensate_from(saga, step.position - 1, now, (entry,), frozenset({step.position}))


def compensation_failed(
    saga: SagaRecord, step: StepRecord, error: ErrorInfo, now: datetime, tries: int = 1
) -> Transition:
    step = replace(step, status=StepStatus.COMPENSATION_FAILED, error=error)
    saga = replace(
        with_step(saga, step),
        state=SagaState.COMPENSATION_FAILED,
        error=error,
        updated_at=now,
        finished_at=now,
    )
    entry = HistoryEntry(
        HistoryEvent.COMPENSATION_FAILED,
        SagaState.COMPENSATING,
        SagaState.COMPENSATION_FAILED,
        step.name,
        {"error": error.to_json(), **(tries_detail(tries) or {})},
    )
    publish = PublishEvent(
        event_name(saga.saga_type, SagaOutcome.COMPENSATION_FAILED), event_payload(saga)
    )
    return Transition(saga, (publish,), (entry,), frozenset({step.position}))


def event_payload(saga: SagaRecord) -> dict[str, JSON]:
    return {
        "saga_id": saga.saga_id,
        "saga_type": saga.saga_type,
        "state": saga.state.value,
        "error": saga.error.to_json() if saga.error else None,
        "results": {s.name: s.result for s in saga.steps if s.status is StepStatus.COMPLETED},
        "compensated": [s.name for s in saga.steps if s.status is StepStatus.COMPENSATED],
    }
