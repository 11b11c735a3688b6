"""What the state machine reads and writes: saga and step records, events, commands.

Plain frozen dataclasses, JSON-friendly; shared by the machine, the store and the orchestrator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sagaflow.core.definitions import Step
from sagaflow.core.vocabulary import (
    ErrorType,
    HistoryEvent,
    OnTimeout,
    Phase,
    SagaOutcome,
    SagaState,
    StepStatus,
)

JSON = Any


@dataclass(frozen=True)
class ErrorInfo:
    """A failure as data: it travels as JSON between processes and is stored as such.

    `type` is the exception's class name (or an ErrorType sagaflow records itself);
    `qualified_type` its `module.QualName`, and `details` what it carried as `details` (JSON),
    when a service raised it. Payloads without them (older services) read back as None.
    """

    type: str
    message: str
    traceback: str | None = None
    task_id: str | None = None
    non_retryable: bool = False  # raised as sagaflow.NonRetryable: retrying cannot help
    qualified_type: str | None = None
    details: JSON = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": str(self.type), "message": self.message}
        if self.traceback:
            data["traceback"] = self.traceback
        if self.task_id:
            data["task_id"] = self.task_id
        if self.non_retryable:
            data["non_retryable"] = True
        if self.qualified_type:
            data["qualified_type"] = self.qualified_type
        if self.details is not None:
            data["details"] = self.details
        return data

    @classmethod
    def from_json(cls, data: object) -> ErrorInfo:
        if not isinstance(data, dict):
            return cls(type=ErrorType.UNKNOWN, message=str(data))
        qualified = data.get("qualified_type")
        return cls(
            type=str(data.get("type") or ErrorType.UNKNOWN),
            message=str(data.get("message") or ""),
            # to_json leaves empty ones out: read them back as None, whatever the sender wrote.
            traceback=data.get("traceback") or None,
            task_id=data.get("task_id") or None,
            non_retryable=data.get("non_retryable") is True,
            qualified_type=qualified if isinstance(qualified, str) and qualified else None,
            details=data.get("details"),
        )

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else str(self.type)


@dataclass(frozen=True)
class StepRecord:
    position: int
    name: str
    action: str
    compensation: str | None
    queue: str | None
    compensation_queue: str | None
    compensate_on_failure: bool
    retry: dict[str, Any] | None = None  # Retry.to_json() of the action's policy
    compensation_retry: dict[str, Any] | None = None
    timeout: float | None = None
    on_timeout: OnTimeout | None = None
    pivot: bool = False
    retriable: bool = False
    verify: str | None = None  # the task asked whether an action that timed out took effect
    # The step's timer: an executing action times out after it, a step waiting to be retried
    # is sent again after it, a verify that has not answered by then escalates.
    deadline_at: datetime | None = None
    status: StepStatus = StepStatus.PENDING
    result: JSON = None
    error: ErrorInfo | None = None
    attempts: int = 0
    compensation_attempts: int = 0
    task_id: str | None = None
    compensation_task_id: str | None = None
    verify_attempts: int = 0
    verify_task_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    compensation_started_at: datetime | None = None
    compensated_at: datetime | None = None

    @classmethod
    def from_step(cls, position: int, step: Step) -> StepRecord:
        return cls(
            position=position,
            name=step.name,
            action=step.action,
            compensation=step.compensation,
            queue=step.queue,
            compensation_queue=step.compensation_queue or step.queue,
            compensate_on_failure=step.compensate_on_failure,
            retry=step.retry.to_json() if step.retry else None,
            compensation_retry=step.compensation_retry.to_json()
            if step.compensation_retry
            else None,
            timeout=step.timeout,
            on_timeout=OnTimeout(step.on_timeout) if step.on_timeout else None,
            pivot=step.pivot,
            retriable=step.retriable,
            verify=step.verify,
        )


@dataclass(frozen=True)
class SagaRecord:
    saga_id: str
    saga_type: str
    state: SagaState
    data: JSON
    steps: tuple[StepRecord, ...]
    version: int = 0
    current_step: int | None = None
    error: ErrorInfo | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    deadline_at: datetime | None = None  # stopped and compensated if still running by then

    def step(self, position: int) -> StepRecord:
        return self.steps[position]


# Events: what the orchestrator is told.


@dataclass(frozen=True)
class StepSucceeded:
    position: int
    phase: Phase
    attempt: int
    result: JSON = None
    task_id: str | None = None  # the step task that reported, when the transport tells us
    tries: int = 1  # runs of the task, Celery retries included


@dataclass(frozen=True)
class StepFailed:
    position: int
    phase: Phase
    attempt: int
    error: ErrorInfo
    tries: int = 1


Event = StepSucceeded | StepFailed


# Commands: what the orchestrator must do once the transition is stored.


@dataclass(frozen=True)
class DispatchTask:
    saga_id: str
    position: int
    phase: Phase
    attempt: int
    task_name: str
    queue: str | None
    task_id: str
    context: dict[str, JSON]


@dataclass(frozen=True)
class PublishEvent:
    name: str
    payload: dict[str, JSON]


Command = DispatchTask | PublishEvent


@dataclass(frozen=True)
class HistoryEntry:
    event: HistoryEvent
    from_state: SagaState | None
    to_state: SagaState
    step: str | None = None
    detail: dict[str, JSON] | None = None


@dataclass(frozen=True)
class Transition:
    saga: SagaRecord
    commands: tuple[Command, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    changed_steps: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Ignored:
    """The event changes nothing; `reason` says why (kept for logs)."""

    reason: str


def task_id_for(saga_id: str, position: int, phase: Phase, attempt: int) -> str:
    """Deterministic Celery task id: the saga id makes every task findable in Flower."""
    return f"{saga_id}.{position}.{phase.value}.{attempt}"


def parse_task_id(task_id: str) -> tuple[str, int, Phase, int] | None:
    """(saga id, position, phase, attempt) of a task id `task_id_for` made, else None."""
    parts = task_id.rsplit(".", 3)
    if len(parts) != 4 or not parts[1].isdigit() or not parts[3].isdigit():
        return None
    try:
        phase = Phase(parts[2])
    except ValueError:
        return None
    return parts[0], int(parts[1]), phase, int(parts[3])


def idempotency_key(saga_id: str, step_name: str, phase: Phase) -> str:
    """Stable across retries and redeliveries of the same step and phase."""
    suffix = "" if phase is Phase.ACTION else ":compensation"
    return f"{saga_id}:{step_name}{suffix}"


def event_name(saga_type: str, outcome: SagaOutcome) -> str:
    """`order` -> `OrderCompleted`; `ship-parcel.v2` -> `ShipParcelV2Completed`."""
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", saga_type) if p]
    camel = "".join(p[:1].upper() + p[1:] for p in parts)
    return f"{camel}{outcome}"
