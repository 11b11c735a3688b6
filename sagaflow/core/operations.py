"""What operators, and a saga's deadline, do to a saga: cancel it, stop it at its deadline,
resolve an escalated step, retry or mark done a failed compensation.

Pure like the machine (`sagaflow.core.machine` re-exports these): no Celery, no SQL, no clock.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from sagaflow.core.records import (
    JSON,
    ErrorInfo,
    HistoryEntry,
    Ignored,
    PublishEvent,
    SagaRecord,
    StepRecord,
    Transition,
    event_name,
)
from sagaflow.core.transitions import (
    compensate_from,
    dispatch_compensation,
    event_payload,
    resume,
    with_step,
)
from sagaflow.core.vocabulary import ErrorType, HistoryEvent, SagaOutcome, SagaState, StepStatus


def resolve(
    saga: SagaRecord,
    step_name: str,
    applied: bool,
    reason: str,
    now: datetime,
    result: JSON = None,
) -> Transition | Ignored:
    """Operator: say whether the escalated step took effect; the saga carries on as after a
    verify (forward if applied; if not, the steps before it are compensated, or a retriable
    step is sent again)."""
    if saga.state is not SagaState.ESCALATED:
        return Ignored(f"saga is {saga.state.value}: only an escalated saga is resolved")
    step = saga.steps[saga.current_step] if saga.current_step is not None else None
    if step is None or step.name != step_name:
        waiting = repr(step.name) if step else "none"
        return Ignored(f"step {step_name!r} is not the one waiting for an operator ({waiting})")
    resumed = replace(
        saga,
        state=SagaState.PENDING,
        finished_at=None,
        updated_at=now,
        error=saga.error if saga.cancel_requested_at is not None else None,
    )
    entry = HistoryEntry(
        HistoryEvent.STEP_RESOLVED,
        SagaState.ESCALATED,
        SagaState.PENDING,
        step.name,
        {"applied": applied, "reason": reason},
    )
    return resume(resumed, step, applied, result, now, (entry,))


def pass_deadline(saga: SagaRecord, now: datetime) -> Transition | Ignored:
    """The saga's deadline passed: stop it as a cancel does (the step in flight is waited for
    and follows its timeout policy, completed steps are compensated); it ends `failed` with
    a DeadlineExceeded error. A saga past its pivot goes on: its deadline is dropped."""
    if saga.state is not SagaState.PENDING or saga.deadline_at is None:
        return Ignored(f"saga is {saga.state.value}, with no deadline running")
    if saga.deadline_at > now:
        return Ignored(f"saga has until {saga.deadline_at.isoformat()}")
    if saga.cancel_requested_at is not None:
        return Ignored("saga is already being stopped")
    step = saga.steps[saga.current_step] if saga.current_step is not None else None
    name = step.name if step else None
    if (forward := forward_only(saga)) is not None:
        kept = replace(saga, deadline_at=None, updated_at=now)
        entry = HistoryEntry(
            HistoryEvent.DEADLINE_DROPPED, saga.state, saga.state, name, {"reason": forward}
        )
        return Transition(kept, (), (entry,), frozenset())
    error = ErrorInfo(
        ErrorType.DEADLINE_EXCEEDED,
        f"deadline exceeded: not finished by {saga.deadline_at.isoformat()}",
    )
    stopping = replace(saga, cancel_requested_at=now, error=error, updated_at=now)
    entry = HistoryEntry(
        HistoryEvent.DEADLINE_EXCEEDED,
        saga.state,
        saga.state,
        name,
        {"deadline": saga.deadline_at.isoformat()},
    )
    return Transition(stopping, (), (entry,), frozenset())


def cancel(saga: SagaRecord, reason: str, now: datetime) -> Transition | Ignored:
    """Stop a running saga: nothing new is dispatched, what completed is compensated.

    The step in flight is waited for: when it succeeds it is compensated too, when it fails
    compensation starts as for any failure. The saga ends `cancelled`. Compensations cannot be
    cancelled.
    """
    if saga.state is SagaState.ESCALATED and saga.current_step is not None:
        step_name = saga.steps[saga.current_step].name
        return Ignored(
            f"saga is escalated: resolve step {step_name!r} first (sagaflow resolve says "
            "whether it took effect)"
        )
    if saga.state.is_terminal:
        return Ignored(f"saga is {saga.state.value}: nothing to cancel")
    if saga.state is SagaState.COMPENSATING:
        return Ignored("saga is already compensating; compensations cannot be cancelled")
    if (forward := forward_only(saga)) is not None:
        return Ignored(forward)
    if saga.cancel_requested_at is not None:
        return Ignored("cancel already requested")
    error = ErrorInfo(type=ErrorType.CANCELLED, message=reason or "cancelled by an operator")
    if saga.state is SagaState.REQUESTED:
        # Not started yet: nothing ran, so it ends here, and a later start finds it finished.
        done = replace(
            saga, state=SagaState.CANCELLED, error=error, updated_at=now, finished_at=now
        )
        entry = HistoryEntry(
            HistoryEvent.SAGA_CANCELLED,
            SagaState.REQUESTED,
            SagaState.CANCELLED,
            None,
            {"reason": error.message},
        )
        publish = PublishEvent(
            event_name(saga.saga_type, SagaOutcome.CANCELLED), event_payload(done)
        )
        return Transition(done, (publish,), (entry,), frozenset())
    waiting = replace(saga, cancel_requested_at=now, error=error, updated_at=now)
    step = saga.steps[saga.current_step] if saga.current_step is not None else None
    entry = HistoryEntry(
        HistoryEvent.CANCEL_REQUESTED,
        saga.state,
        saga.state,
        step.name if step else None,
        {"reason": error.message},
    )
    return Transition(waiting, (), (entry,), frozenset())


def retry_compensation(saga: SagaRecord, now: datetime) -> Transition | Ignored:
    """Operator: resume a saga stopped in COMPENSATION_FAILED at the compensation that failed."""
    if saga.state is not SagaState.COMPENSATION_FAILED:
        return Ignored(f"saga is {saga.state.value}: only a saga in compensation_failed is retried")
    step = _failed_compensation(saga)
    if step is None:
        return Ignored("no failed compensation to retry")
    resumed = replace(
        saga, state=SagaState.COMPENSATING, finished_at=None, error=_original_error(saga)
    )
    entry = HistoryEntry(
        HistoryEvent.COMPENSATION_RETRIED,
        SagaState.COMPENSATION_FAILED,
        SagaState.COMPENSATING,
        step.name,
    )
    return dispatch_compensation(resumed, step, now, (entry,), frozenset())


def mark_compensated(
    saga: SagaRecord, step_name: str, reason: str, now: datetime
) -> Transition | Ignored:
    """Operator: the failed compensation was done by hand; carry on with the steps before it."""
    if saga.state is not SagaState.COMPENSATION_FAILED:
        return Ignored(
            f"saga is {saga.state.value}: only a saga in compensation_failed has a step to mark"
        )
    step = _failed_compensation(saga)
    if step is None or step.name != step_name:
        expected = repr(step.name) if step else "none"
        return Ignored(
            f"step {step_name!r} has no failed compensation (the failed one: {expected})"
        )
    step = replace(step, status=StepStatus.COMPENSATED, compensated_at=now)
    resumed = replace(
        with_step(saga, step),
        state=SagaState.COMPENSATING,
        finished_at=None,
        updated_at=now,
        error=_original_error(saga),
    )
    entry = HistoryEntry(
        HistoryEvent.STEP_COMPENSATED_MANUALLY,
        SagaState.COMPENSATION_FAILED,
        SagaState.COMPENSATING,
        step.name,
        {"reason": reason},
    )
    return compensate_from(resumed, step.position - 1, now, (entry,), frozenset({step.position}))


def forward_only(saga: SagaRecord) -> str | None:
    """Why the saga can no longer be undone (past its pivot or into its retriable steps)."""
    for step in saga.steps:
        if step.pivot and step.status is StepStatus.COMPLETED:
            return f"past its pivot step {step.name!r}: it can only go forward"
        if step.pivot and step.status in (StepStatus.EXECUTING, StepStatus.VERIFYING):
            return (
                f"its pivot step {step.name!r} is in flight: once it succeeds the saga can "
                "only go forward"
            )
        if step.retriable and step.status is not StepStatus.PENDING:
            return f"its retriable step {step.name!r} has started: it can only go forward"
    return None


def _original_error(saga: SagaRecord) -> ErrorInfo | None:
    """The failure that started compensating (a failed compensation overwrote saga.error)."""
    return next((s.error for s in saga.steps if s.status is StepStatus.FAILED), saga.error)


def _failed_compensation(saga: SagaRecord) -> StepRecord | None:
    return next((s for s in saga.steps if s.status is StepStatus.COMPENSATION_FAILED), None)
