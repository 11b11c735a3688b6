"""Log records that name the saga they are about, and a JSON log format for the workers.

While a worker handles a saga's message (the orchestrator's start and outcome tasks, a service's
step task), every record logged, by sagaflow, Celery or the task itself, carries `saga_id`,
`saga_type`, `step` and `phase` as attributes (None outside a saga): a log pipeline can index
them, and `%(saga_id)s` can be used in a format. With SAGAFLOW_LOG_FORMAT=json the workers
write one JSON object per line with those fields. Standard library only.
"""

from __future__ import annotations

import contextvars
import json
import logging
import traceback
import types
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

SAGA_FIELDS = ("saga_id", "saga_type", "step", "phase")
LOG_FORMATS = ("text", "json")

_NONE: Mapping[str, Any] = types.MappingProxyType({})
_current: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "sagaflow_saga", default=_NONE
)


def enter(fields: Mapping[str, Any]) -> contextvars.Token[Mapping[str, Any]]:
    """From now on (in this thread or task), records carry these saga fields: the text ones
    among SAGA_FIELDS. `leave` with the token ends it."""
    known = {k: v for k, v in fields.items() if k in SAGA_FIELDS and isinstance(v, str)}
    return _current.set({**_current.get(), **known})


def leave(token: contextvars.Token[Mapping[str, Any]]) -> None:
    _current.reset(token)


@contextmanager
def saga_logged(**fields: Any) -> Iterator[None]:
    """Records logged inside carry these saga fields."""
    token = enter(fields)
    try:
        yield
    finally:
        leave(token)


def fields_of_task(request: Any, args: Any, kwargs: Any) -> dict[str, Any]:
    """The saga a task's message is about: an orchestrator task's keyword arguments, or a step
    task's context (its first argument) and the outcome its callback will report. Nothing for
    other tasks; never raises, whatever the message holds."""
    try:
        fields: dict[str, str] = {}

        def take(source: Any, names: tuple[str, ...]) -> None:
            if isinstance(source, Mapping):
                fields.update({k: source[k] for k in names if isinstance(source.get(k), str)})

        context = args[0] if isinstance(args, (list, tuple)) and args else None
        if isinstance(context, Mapping) and "data" in context:  # a step's context
            take(context, ("saga_id", "saga_type", "step"))
        for callback in getattr(request, "callbacks", None) or () if fields else ():
            if isinstance(callback, Mapping):  # the outcome report: it names the phase
                take(callback.get("kwargs"), ("phase",))
        take(kwargs, SAGA_FIELDS)  # an orchestrator task's own arguments
        return fields
    except Exception:  # a malformed message is the screen's to refuse, not logging's to trip on
        return {}


class SagaFields(logging.Filter):
    """Puts the current saga's fields on every record a handler sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _current.get()
        for name in SAGA_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, current.get(name))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the saga's
    fields, the task's id and name when a task logged it, and the traceback as text.
    `current_task` says which task is running (Celery's get_current_task)."""

    def __init__(self, current_task: Callable[[], Any] | None = None) -> None:
        super().__init__()
        self._current_task = current_task

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        task = self._current_task() if self._current_task else None
        if task is not None and getattr(task, "request", None) is not None:
            entry["task_id"] = task.request.id
            entry["task_name"] = task.name
        for name in SAGA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        entry["process"] = record.processName
        if record.exc_info:
            entry["traceback"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def install(
    handlers: list[logging.Handler],
    log_format: str,
    current_task: Callable[[], Any] | None = None,
) -> None:
    """Put the saga fields on `handlers` and, for "json", the JSON format."""
    for handler in handlers:
        if not any(isinstance(f, SagaFields) for f in handler.filters):
            handler.addFilter(SagaFields())
        if log_format == "json":
            handler.setFormatter(JsonFormatter(current_task))
