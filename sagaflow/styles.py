"""How saga states and step statuses look in a terminal: shared by the CLI (sagaflow.ops) and
the demo (sagaflow.devstack), which must not import each other's modules."""

from __future__ import annotations

from rich.text import Text

from sagaflow.core.definitions import SagaState, StepStatus

STATE_STYLE = {
    SagaState.REQUESTED: "dim cyan",
    SagaState.STARTED: "cyan",
    SagaState.PENDING: "cyan",
    SagaState.COMPENSATING: "yellow",
    SagaState.COMPLETED: "green",
    SagaState.FAILED: "red",
    SagaState.COMPENSATION_FAILED: "bold red",
    SagaState.REJECTED: "magenta",
    SagaState.CANCELLED: "yellow",
    SagaState.ESCALATED: "bold magenta",
}

STEP_MARK = {
    StepStatus.PENDING: ("·", "dim"),
    StepStatus.EXECUTING: ("…", "cyan"),
    StepStatus.COMPLETED: ("✓", "green"),
    StepStatus.FAILED: ("✗", "red"),
    StepStatus.COMPENSATING: ("↩…", "yellow"),
    StepStatus.COMPENSATED: ("✓↩", "yellow"),
    StepStatus.COMPENSATION_FAILED: ("✓↩✗", "bold red"),
    StepStatus.SKIPPED: ("-", "dim"),
    StepStatus.WAITING_RETRY: ("↻", "yellow"),
    StepStatus.VERIFYING: ("?…", "cyan"),
    StepStatus.OUTCOME_UNKNOWN: ("?", "bold magenta"),
}


def state_text(state: SagaState) -> Text:
    return Text(state.value, style=STATE_STYLE.get(state, ""))
