"""Names and payload shapes of the messages exchanged between services and the orchestrator.

Shared by the orchestrator and the service-side module so both agree without importing each
other. Everything here is JSON.
"""

from __future__ import annotations

import traceback as traceback_module
from typing import Any

START_TASK = "sagaflow.start"
STEP_SUCCEEDED_TASK = "sagaflow.step_succeeded"
STEP_FAILED_TASK = "sagaflow.step_failed"
# The errback attached to every step. On a worker that loaded sagaflow.service it runs inline
# in the failing worker (Celery calls errbacks taking (request, exc, traceback) in-process), so
# the error's type and message travel in the report. Elsewhere it is published with only the
# failed task's id and the orchestrator records that the error is unknown.
ERRBACK_TASK = "sagaflow.errback"

MAX_TRACEBACK_CHARS = 8000


def error_payload(
    exc: BaseException, traceback: Any = None, task_id: str | None = None
) -> dict[str, Any]:
    """A failure as JSON: type, message and (truncated) traceback."""
    if isinstance(traceback, str):
        text = traceback
    elif traceback is not None:
        text = "".join(traceback_module.format_tb(traceback))
    else:
        text = "".join(traceback_module.format_exception(type(exc), exc, exc.__traceback__))
    payload: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": str(exc)[:4000],
        "traceback": text[-MAX_TRACEBACK_CHARS:] if text else None,
    }
    if task_id:
        payload["task_id"] = task_id
    return payload


def outcome_kwargs(
    saga_id: str, position: int, phase: str, attempt: int, step: str
) -> dict[str, Any]:
    """Keyword arguments carried by callbacks: they identify (saga, step, phase, attempt).

    `step` (the step's name) is there for people reading Flower; the position is what counts.
    """
    return {
        "saga_id": saga_id,
        "step": step,
        "position": position,
        "phase": phase,
        "attempt": attempt,
    }
