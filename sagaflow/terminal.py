"""What sagaflow's commands show in a terminal, shared by the CLI (sagaflow.ops) and the demo
and stack (sagaflow.devstack), which do not import the CLI: saga states and step statuses in
colour, and a database error in its driver's words."""

from __future__ import annotations

import sqlalchemy as sa
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


def driver_message(exc: BaseException) -> str:
    """A database error in its driver's words (SQLAlchemy's adds the statement and a link)."""
    return str(exc.orig) if isinstance(exc, sa.exc.DBAPIError) else str(exc)
