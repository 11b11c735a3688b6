"""Why a saga is where it is, as the CLI and the dashboard tell an operator: what it waits on
(the task, its queue, since when) and what an operator can do next (the exact command)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime

from sagaflow.core.definitions import Phase, SagaState, StepStatus
from sagaflow.core.machine import SagaRecord, StepRecord

DEFAULT_QUEUE = "celery"  # where Celery sends a task no route names

# What a step's status means to an operator, as the dashboard colours it: red needs one.
STEP_CLASS = {
    StepStatus.PENDING: "muted",
    StepStatus.EXECUTING: "running",
    StepStatus.COMPLETED: "ok",
    StepStatus.FAILED: "bad",
    StepStatus.COMPENSATING: "warn",
    StepStatus.COMPENSATED: "warn",
    StepStatus.COMPENSATION_FAILED: "alarm",
    StepStatus.SKIPPED: "muted",
    StepStatus.WAITING_RETRY: "warn",
    StepStatus.VERIFYING: "running",
    StepStatus.OUTCOME_UNKNOWN: "alarm",
}


@dataclass(frozen=True)
class Waiting:
    """The task a running saga waits on."""

    step: str
    phase: Phase
    task: str
    queue: str
    since: datetime | None
    status: StepStatus


@dataclass(frozen=True)
class NextAction:
    """Something an operator can do about a saga, and the command that does it."""

    what: str
    command: str
    button: str | None = None  # the dashboard's action of the same name, if it has one


def waiting_on(saga: SagaRecord) -> Waiting | None:
    """The step task a saga that is not finished waits on: its compensation's, on its own
    queue, while the saga compensates."""
    if saga.state.is_terminal or saga.current_step is None:
        return None
    step = saga.steps[saga.current_step]
    if step.status is StepStatus.COMPENSATING:
        task, queue, since = (
            step.compensation,
            step.compensation_queue,
            step.compensation_started_at,
        )
        phase = Phase.COMPENSATION
    elif step.status is StepStatus.VERIFYING and step.verify:
        task, queue, since, phase = step.verify, step.queue, step.finished_at, Phase.VERIFY
    else:
        task, queue, since, phase = step.action, step.queue, step.started_at, Phase.ACTION
    return Waiting(step.name, phase, task or "", queue or DEFAULT_QUEUE, since, step.status)


def next_actions(saga: SagaRecord) -> list[NextAction]:
    """What an operator can do next, most likely first; none for a saga that needs nothing."""
    saga_id = shlex.quote(saga.saga_id)
    if saga.state is SagaState.COMPENSATION_FAILED:
        step = _step_in(saga, StepStatus.COMPENSATION_FAILED)
        name = shlex.quote(step.name) if step else "STEP"
        return [
            NextAction(
                "fix what made the compensation fail, then run it again",
                f"sagaflow retry {saga_id}",
                "retry",
            ),
            NextAction(
                "or, once it is undone by hand, say so and let compensation carry on",
                f"sagaflow mark-compensated {saga_id} {name} --reason '...'",
            ),
        ]
    if saga.state is SagaState.ESCALATED:
        step = _step_in(saga, StepStatus.OUTCOME_UNKNOWN)
        name = shlex.quote(step.name) if step else "STEP"
        return [
            NextAction(
                "find out whether the step took effect, then say so: the saga carries on "
                "forward if it did, compensates if it did not",
                f"sagaflow resolve {saga_id} {name} --applied|--not-applied --reason '...'",
            )
        ]
    if not saga.state.is_terminal:
        return [
            NextAction(
                "stop it: the step in flight finishes, then what was done is undone",
                f"sagaflow cancel {saga_id} --reason '...'",
                "cancel",
            )
        ]
    return []


def _step_in(saga: SagaRecord, status: StepStatus) -> StepRecord | None:
    return next((step for step in saga.steps if step.status is status), None)
