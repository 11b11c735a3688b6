"""The saga state machine as pure functions: (saga, event) -> (saga', commands, history).

No Celery, no SQL, no clock: callers pass `now`. Every event names the step, the phase and the
attempt it reports on; an event that does not match what the saga is waiting for (a duplicate,
a late or a forged callback) is ignored, so replays never advance a saga twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from sagaflow.core.definitions import Step

# What operators and a saga's deadline do lives in sagaflow.core.operations; importable from here.
from sagaflow.core.operations import (
    cancel,
    forward_only,
    mark_compensated,
    pass_deadline,
    resolve,
    retry_compensation,
)
from sagaflow.core.records import (
    JSON,
    Command,
    DispatchTask,
    ErrorInfo,
    Event,
    HistoryEntry,
    Ignored,
    PublishEvent,
    SagaRecord,
    StepFailed,
    StepRecord,
    StepSucceeded,
    Transition,
    event_name,
    idempotency_key,
    task_id_for,
)
from sagaflow.core.transitions import (
    RETRY_BACKOFF_MAX,
    action_failed,
    action_succeeded,
    compensation_failed,
    compensation_succeeded,
    dispatch_action,
    dispatch_compensation,
    dispatch_verify,
    escalate,
    resume,
    retry_delay,
    with_step,
)
from sagaflow.core.vocabulary import (
    ErrorType,
    HistoryEvent,
    OnTimeout,
    Phase,
    SagaState,
    StepStatus,
)


def new_saga(
    saga_id: str,
    saga_type: str,
    data: JSON,
    steps: Sequence[Step],
    now: datetime,
    deadline: float | None = None,
) -> SagaRecord:
    """A saga recorded as STARTED; `deadline` is in seconds from `now`."""
    return SagaRecord(
        deadline_at=now + timedelta(seconds=deadline) if deadline else None,
        saga_id=saga_id,
        saga_type=saga_type,
        state=SagaState.STARTED,
        data=data,
        steps=tuple(StepRecord.from_step(i, s) for i, s in enumerate(steps)),
        created_at=now,
        updated_at=now,
    )


def rejected_saga(
    saga_id: str, saga_type: str, data: JSON, error: ErrorInfo, now: datetime
) -> SagaRecord:
    return SagaRecord(
        saga_id=saga_id,
        saga_type=saga_type,
        state=SagaState.REJECTED,
        data=data,
        steps=(),
        error=error,
        created_at=now,
        updated_at=now,
        finished_at=now,
    )


def begin(saga: SagaRecord, now: datetime) -> Transition:
    """Dispatch the first step of a saga just recorded as STARTED."""
    if saga.state is not SagaState.STARTED:
        raise ValueError(f"saga {saga.saga_id} is {saga.state.value}, not started")
    history = HistoryEntry(HistoryEvent.SAGA_STARTED, SagaState.STARTED, SagaState.PENDING)
    pending = replace(saga, state=SagaState.PENDING)
    return dispatch_action(pending, 0, now, (history,), frozenset())


def apply(saga: SagaRecord, event: Event, now: datetime) -> Transition | Ignored:
    """Apply one step outcome. Returns Ignored for anything the saga is not waiting for."""
    if saga.state.is_terminal:
        return Ignored(f"saga is {saga.state.value}")
    if not 0 <= event.position < len(saga.steps):
        return Ignored(f"no step at position {event.position}")
    step = saga.steps[event.position]
    if event.phase is Phase.VERIFY:
        if step.status is not StepStatus.VERIFYING or saga.state is not SagaState.PENDING:
            return Ignored(f"step {step.name!r} is {step.status.value}, not verifying")
        if event.attempt != step.verify_attempts:
            return Ignored(f"step {step.name!r} verify {event.attempt} is not the current one")
        if (forged := _wrong_reporter(event, step.verify_task_id)) is not None:
            return forged
        return _verified(saga, step, event, now)
    if event.phase is Phase.ACTION:
        if step.status is not StepStatus.EXECUTING or saga.state is not SagaState.PENDING:
            return Ignored(f"step {step.name!r} action is {step.status.value}, not executing")
        if event.attempt != step.attempts:
            return Ignored(f"step {step.name!r} attempt {event.attempt} is not the current one")
        if (forged := _wrong_reporter(event, step.task_id)) is not None:
            return forged
        if isinstance(event, StepSucceeded):
            return action_succeeded(saga, step, event.result, now, event.tries)
        return action_failed(saga, step, event.error, now, event.tries)
    if step.status is not StepStatus.COMPENSATING or saga.state is not SagaState.COMPENSATING:
        return Ignored(f"step {step.name!r} is {step.status.value}, not compensating")
    if event.attempt != step.compensation_attempts:
        return Ignored(
            f"step {step.name!r} compensation attempt {event.attempt} is not the current one"
        )
    if (forged := _wrong_reporter(event, step.compensation_task_id)) is not None:
        return forged
    if isinstance(event, StepSucceeded):
        return compensation_succeeded(saga, step, now, event.tries)
    return compensation_failed(saga, step, event.error, now, event.tries)


def redrive(saga: SagaRecord, stalled_before: datetime, now: datetime) -> Transition | Ignored:
    """Send again what a saga that made no progress since `stalled_before` waits for.

    Its step (or compensation) message may have been lost with a broker, a crashed worker or a
    failed publish: a new attempt goes out with a new task id, under the step's same idempotency
    key, and only that attempt's outcome will count. Deciding on `updated_at` makes the redrive
    its own lease: a second sweep that reads the saga afterwards sees it fresh and leaves it.
    """
    if saga.state.is_terminal:
        return Ignored(f"saga is {saga.state.value}")
    if saga.updated_at is not None and saga.updated_at >= stalled_before:
        return Ignored("saga made progress recently")
    if saga.current_step is None or not 0 <= saga.current_step < len(saga.steps):
        return Ignored("saga waits on no step")
    step = saga.steps[saga.current_step]
    detail = {"stalled_since": saga.updated_at.isoformat() if saga.updated_at else None}
    return _send_again(saga, step, detail, now)


# What a step's task is doing, by the phase its task id names.
_PHASE_STATUS = {
    Phase.ACTION: StepStatus.EXECUTING,
    Phase.COMPENSATION: StepStatus.COMPENSATING,
    Phase.VERIFY: StepStatus.VERIFYING,
}


def worker_lost(
    saga: SagaRecord, position: int, phase: Phase, attempt: int, worker: str, now: datetime
) -> Transition | Ignored:
    """The worker holding this attempt's task is gone (its beacon stopped): send the task
    again now rather than after the stall timeout. Only the attempt the saga waits on counts."""
    if saga.state.is_terminal:
        return Ignored(f"saga is {saga.state.value}")
    if saga.current_step != position or not 0 <= position < len(saga.steps):
        return Ignored(f"saga does not wait on the step at position {position}")
    step = saga.steps[position]
    if step.status is not _PHASE_STATUS[phase]:
        return Ignored(
            f"step {step.name!r} is {step.status.value}, not waiting on its {phase.value}"
        )
    current = {
        Phase.ACTION: step.attempts,
        Phase.COMPENSATION: step.compensation_attempts,
        Phase.VERIFY: step.verify_attempts,
    }[phase]
    if attempt != current:
        return Ignored(f"step {step.name!r} {phase.value} attempt {attempt} is not the current one")
    return _send_again(saga, step, {"worker_lost": worker}, now)


def _send_again(
    saga: SagaRecord, step: StepRecord, detail: dict[str, JSON], now: datetime
) -> Transition | Ignored:
    if saga.state is SagaState.PENDING and step.status is StepStatus.EXECUTING:
        if saga.cancel_requested_at is not None:
            # Cancelled: nothing new is sent. The step never reported, so it may have
            # half-happened: undo it (if it can be) with the steps before it.
            error = ErrorInfo(
                type=ErrorType.CANCELLED,
                message="cancelled while this step's outcome was lost; it is compensated",
                task_id=step.task_id,
            )
            unknown = replace(step, compensate_on_failure=step.compensation is not None)
            return action_failed(with_step(saga, unknown), unknown, error, now)
        entry = HistoryEntry(HistoryEvent.STEP_REDRIVEN, saga.state, saga.state, step.name, detail)
        resent = dispatch_action(saga, step.position, now, (entry,), frozenset())
        if step.deadline_at is None:
            return resent
        # A new attempt does not buy the step more time: its deadline stands.
        kept = replace(resent.saga.steps[step.position], deadline_at=step.deadline_at)
        return replace(resent, saga=with_step(resent.saga, kept))
    if saga.state is SagaState.PENDING and step.status is StepStatus.VERIFYING:
        entry = HistoryEntry(
            HistoryEvent.VERIFY_REDRIVEN, saga.state, saga.state, step.name, detail
        )
        return dispatch_verify(saga, step, now, (entry,), step.deadline_at)
    if saga.state is SagaState.COMPENSATING and step.status is StepStatus.COMPENSATING:
        entry = HistoryEntry(
            HistoryEvent.COMPENSATION_REDRIVEN, saga.state, saga.state, step.name, detail
        )
        return dispatch_compensation(saga, step, now, (entry,), frozenset())
    return Ignored(f"step {step.name!r} is {step.status.value}: nothing to send again")


def on_timer(saga: SagaRecord, position: int, now: datetime) -> Transition | Ignored:
    """A step's timer (`deadline_at`) is due: time out its action or send it again."""
    if not 0 <= position < len(saga.steps):
        return Ignored(f"no step at position {position}")
    step = saga.steps[position]
    if step.status is StepStatus.WAITING_RETRY:
        return _retry_now(saga, step, now)
    if step.status is StepStatus.VERIFYING and saga.state is SagaState.PENDING:
        return _verify_timed_out(saga, step, now)
    return time_out(saga, position, now)


def _retry_now(saga: SagaRecord, step: StepRecord, now: datetime) -> Transition | Ignored:
    if saga.state is not SagaState.PENDING:
        return Ignored(f"saga is {saga.state.value}")
    if step.deadline_at is not None and step.deadline_at > now:
        return Ignored(f"step {step.name!r} is retried at {step.deadline_at.isoformat()}")
    entry = HistoryEntry(
        HistoryEvent.STEP_RETRIED, saga.state, saga.state, step.name, {"attempt": step.attempts + 1}
    )
    return dispatch_action(saga, step.position, now, (entry,), frozenset())


def time_out(saga: SagaRecord, position: int, now: datetime) -> Transition | Ignored:
    """Fail an action that reported no outcome before its deadline.

    Its outcome is unknown: with on_timeout "compensate" the step itself is compensated too
    (first), with "fail" only the steps before it (a retriable step is sent again), with
    "verify" its verify task is asked, with "escalate" the saga stops for an operator. A late
    outcome of the step is ignored.
    """
    if saga.state is not SagaState.PENDING or not 0 <= position < len(saga.steps):
        return Ignored(f"saga is {saga.state.value}")
    step = saga.steps[position]
    if step.status is not StepStatus.EXECUTING or step.deadline_at is None:
        return Ignored(f"step {step.name!r} is {step.status.value}, not waiting on a deadline")
    if step.deadline_at > now:
        return Ignored(f"step {step.name!r} has until {step.deadline_at.isoformat()}")
    error = ErrorInfo(
        type=ErrorType.STEP_TIMEOUT,
        message=f"no outcome within {step.timeout:g}s; the step may have taken effect "
        f"(on_timeout={step.on_timeout})",
        task_id=step.task_id,
    )
    if step.on_timeout in (OnTimeout.VERIFY, OnTimeout.ESCALATE):
        timed_out = HistoryEntry(
            HistoryEvent.STEP_TIMED_OUT,
            saga.state,
            saga.state,
            step.name,
            {"error": error.to_json()},
        )
        step = replace(step, error=error, finished_at=now)
        if step.on_timeout is OnTimeout.VERIFY:
            deadline = now + timedelta(seconds=step.timeout or 0)
            return dispatch_verify(saga, step, now, (timed_out,), deadline)
        unknown = replace(step, status=StepStatus.OUTCOME_UNKNOWN, deadline_at=None)
        reason = "the step timed out and its outcome is unknown (on_timeout=escalate)"
        return escalate(saga, unknown, error, now, reason, (timed_out,))
    step = replace(step, compensate_on_failure=step.on_timeout is OnTimeout.COMPENSATE)
    return action_failed(with_step(saga, step), step, error, now)


def _verify_timed_out(saga: SagaRecord, step: StepRecord, now: datetime) -> Transition | Ignored:
    if step.deadline_at is None or step.deadline_at > now:
        return Ignored(f"verify of step {step.name!r} is not overdue")
    error = ErrorInfo(
        ErrorType.VERIFY_TIMEOUT,
        f"verify task {step.verify} gave no answer within {step.timeout:g}s",
        task_id=step.verify_task_id,
    )
    unknown = replace(step, status=StepStatus.OUTCOME_UNKNOWN, deadline_at=None)
    return escalate(saga, unknown, error, now, "the verify task did not answer in time", ())


def _verified(
    saga: SagaRecord, step: StepRecord, event: StepSucceeded | StepFailed, now: datetime
) -> Transition:
    unknown = replace(step, status=StepStatus.OUTCOME_UNKNOWN, deadline_at=None)
    if isinstance(event, StepFailed):
        return escalate(
            saga, unknown, event.error, now, f"the verify task failed: {event.error}", ()
        )
    reply = event.result
    if not (isinstance(reply, dict) and isinstance(reply.get("applied"), bool)):
        error = ErrorInfo(
            ErrorType.INVALID_VERIFY_REPLY,
            f"verify task {step.verify} answered {str(reply)[:200]!r}, not "
            '{"applied": true|false, "result": ...}',
            task_id=event.task_id,
        )
        return escalate(saga, unknown, error, now, "the verify task's answer is not valid", ())
    applied = reply["applied"]
    entry = HistoryEntry(
        HistoryEvent.STEP_VERIFIED, saga.state, saga.state, step.name, {"applied": applied}
    )
    return resume(saga, step, applied, reply.get("result"), now, (entry,))


def _wrong_reporter(event: Event, expected: str | None) -> Ignored | None:
    # Only the task that was dispatched may report on it: a forged, misrouted or stray
    # outcome (no task id, or another task's) changes nothing.
    reported_by = event.task_id if isinstance(event, StepSucceeded) else event.error.task_id
    if expected is not None and reported_by != expected:
        return Ignored(f"outcome reported by task {reported_by}, not by {expected}")
    return None


__all__ = [
    "JSON",
    "RETRY_BACKOFF_MAX",
    "Command",
    "DispatchTask",
    "ErrorInfo",
    "Event",
    "HistoryEntry",
    "Ignored",
    "PublishEvent",
    "SagaRecord",
    "StepFailed",
    "StepRecord",
    "StepSucceeded",
    "Transition",
    "apply",
    "begin",
    "cancel",
    "event_name",
    "forward_only",
    "idempotency_key",
    "mark_compensated",
    "new_saga",
    "on_timer",
    "pass_deadline",
    "redrive",
    "rejected_saga",
    "resolve",
    "retry_compensation",
    "retry_delay",
    "task_id_for",
    "time_out",
    "worker_lost",
]
