"""saga.* attributes on the spans OpenTelemetry's Celery instrumentation makes for each task.

With `opentelemetry-instrumentation-celery` installed and instrumenting the worker (the
`tracing` extra), the span of a task that runs for a saga carries `saga.id`, `saga.type`,
`saga.step`, `saga.phase` and `saga.attempt`, so a trace backend finds a saga's tasks by its
id. Without it, nothing happens. Called from the task_prerun and task_postrun signals: whichever
of the instrumentation's handlers and sagaflow's runs first, the span is open at one of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

_instrumentation: Any = None  # the instrumentation's utils module, False when not installed


def _utils() -> Any:
    global _instrumentation
    if _instrumentation is None:
        try:
            _instrumentation = importlib.import_module("opentelemetry.instrumentation.celery.utils")
        except Exception:  # not installed, or an install that breaks on import: no tracing
            _instrumentation = False
    return _instrumentation


def tag_task_span(task: Any, task_id: str, fields: Mapping[str, Any], attempt: Any) -> None:
    """Put the saga's fields on `task`'s span, if the instrumentation opened one."""
    utils = _utils()
    if not utils or not fields:
        return
    try:
        opened = utils.retrieve_context(task, task_id)
        span = opened[0] if opened else None
        if span is None or not span.is_recording():
            return
        attributes = {f"saga.{name.removeprefix('saga_')}": value for name, value in fields.items()}
        if isinstance(attempt, int) and not isinstance(attempt, bool):
            attributes["saga.attempt"] = attempt
        span.set_attributes(attributes)
    except Exception:  # tracing must never be why a step fails
        return
