"""The orchestrator's Celery tasks: each checks the message it got (sagaflow.core.messages),
turns it into an engine call, and lets Celery retry while the store is away."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, signals

from sagaflow.core.machine import ErrorInfo, Event, StepFailed, StepSucceeded
from sagaflow.core.messages import (
    Malformed,
    OutcomeMessage,
    parse_no_arguments,
    parse_operator,
    parse_outcome,
    parse_start,
    parse_worker_lost,
)
from sagaflow.core.protocol import (
    OPERATOR_TASK,
    RECOVER_TASK,
    START_TASK,
    STEP_FAILED_TASK,
    STEP_SUCCEEDED_TASK,
    WORKER_LOST_TASK,
    strict_json,
)
from sagaflow.core.quarantine import QUARANTINE_TASK, QuarantinedMessage
from sagaflow.core.vocabulary import ErrorType
from sagaflow.engine.orchestrator import Orchestrator
from sagaflow.errors import ConcurrencyConflict, StoreUnavailable
from sagaflow.messaging.quarantine_records import task_message_record
from sagaflow.service.tasks import install_service_support

logger = logging.getLogger(__name__)


def _event_from(message: OutcomeMessage, succeeded: bool, parent_id: Any = None) -> Event:
    if succeeded:
        return StepSucceeded(
            message.position,
            message.phase,
            message.attempt,
            strict_json(message.result),
            parent_id if isinstance(parent_id, str) else None,
            message.tries,
        )
    error = message.error or {"type": ErrorType.UNKNOWN_ERROR.value, "message": ""}
    info = ErrorInfo.from_json(strict_json(error))
    return StepFailed(message.position, message.phase, message.attempt, info, message.tries)


# The store being down is retried forever with capped backoff: a transition is never
# dropped, and the message is acknowledged only once the transition is stored.
_RETRYING: dict[str, Any] = {
    "autoretry_for": (StoreUnavailable, ConcurrencyConflict),
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": None,
    "acks_late": True,
    "ignore_result": True,
    # This app's tasks only: Celery's default (shared) would also register them, bound to
    # this orchestrator, on every other app the process creates.
    "shared": False,
    "bind": True,
}

TaskBody = Callable[..., Any]  # (task, *args, **kwargs): a bound task's function


def install_orchestrator_tasks(app: Celery, orchestrator: Orchestrator) -> None:
    """Register the orchestrator's tasks on `app`.

    Every task takes whatever a message carried and checks it (sagaflow.core.messages) before the
    store sees it: a message of the wrong shape is quarantined, never raised on.
    """
    signals.task_retry.connect(_store_retry_warning(app), weak=False)
    for name, body in (
        (START_TASK, _start(orchestrator)),
        (STEP_SUCCEEDED_TASK, _step_succeeded(orchestrator)),
        (STEP_FAILED_TASK, _step_failed(orchestrator)),
        (QUARANTINE_TASK, _quarantine(orchestrator)),
        (WORKER_LOST_TASK, _worker_lost(orchestrator)),
        (OPERATOR_TASK, _operator(orchestrator)),
    ):
        app.task(name=name, **_RETRYING)(body)
    # Run by `celery -A sagaflow.worker beat` (schedule below) or `sagaflow recover`.
    app.task(name=RECOVER_TASK, bind=True, acks_late=True, ignore_result=True, shared=False)(
        _recover(app, orchestrator)
    )
    # The errback also lands here when the failing worker lacks sagaflow's service support.
    install_service_support(
        app, orchestrator.queue, max_message_bytes=orchestrator.max_message_bytes
    )


def _refuse(orchestrator: Orchestrator, task: Any, args: Any, kwargs: Any, why: Malformed) -> None:
    """Quarantine the message `task` is running: it is not what the task takes."""
    orchestrator.refuse(task_message_record(task.request, args, kwargs, why))


def _start(orchestrator: Orchestrator) -> TaskBody:
    def start(task: Any, *args: Any, **kwargs: Any) -> None:
        parsed = parse_start(args, kwargs)
        if isinstance(parsed, Malformed):
            orchestrator.refuse_start(
                parsed, task_message_record(task.request, args, kwargs, parsed)
            )
            return
        orchestrator.start(parsed.saga_id, parsed.saga_type, parsed.data, parsed.deadline)

    return start


def _step_succeeded(orchestrator: Orchestrator) -> TaskBody:
    def step_succeeded(task: Any, *args: Any, **kwargs: Any) -> None:
        parsed = parse_outcome(args, kwargs, payload="result")
        if isinstance(parsed, Malformed):
            _refuse(orchestrator, task, args, kwargs, parsed)
            return
        # A link callback's parent is the step task that succeeded: only that task's report
        # counts, so a forged or misrouted callback cannot complete a step.
        event = _event_from(parsed, succeeded=True, parent_id=task.request.parent_id)
        orchestrator.handle(parsed.saga_id, event)

    return step_succeeded


def _step_failed(orchestrator: Orchestrator) -> TaskBody:
    def step_failed(task: Any, *args: Any, **kwargs: Any) -> None:
        parsed = parse_outcome(args, kwargs, payload="error")
        if isinstance(parsed, Malformed):
            _refuse(orchestrator, task, args, kwargs, parsed)
            return
        orchestrator.handle(parsed.saga_id, _event_from(parsed, succeeded=False))

    return step_failed


def _store_retry_warning(app: Celery) -> Callable[..., None]:
    def store_retry(sender: Any = None, reason: Any = None, **_: Any) -> None:
        # Celery logs its own retries at INFO: an unreachable store gets a warning saying so.
        exc = getattr(reason, "exc", None)
        if getattr(sender, "app", None) is app and isinstance(exc, StoreUnavailable):
            logger.warning(
                "%s; the transition (%s) is retried %s",
                one_line(exc),
                sender.name,
                reason.humanize(),
            )

    return store_retry


def _quarantine(orchestrator: Orchestrator) -> TaskBody:
    def quarantine(task: Any, *args: Any, **kwargs: Any) -> None:
        try:
            if args or set(kwargs) != {"record"}:
                raise ValueError("takes one keyword argument, record")
            record = QuarantinedMessage.from_json(kwargs["record"])
        except ValueError as exc:
            why = Malformed(f"malformed quarantine record: {exc}")
            _refuse(orchestrator, task, args, kwargs, why)
            return
        orchestrator.refuse(record, logged=True)

    return quarantine


def _worker_lost(orchestrator: Orchestrator) -> TaskBody:
    def worker_lost(task: Any, *args: Any, **kwargs: Any) -> None:
        parsed = parse_worker_lost(args, kwargs)
        if isinstance(parsed, Malformed):
            _refuse(orchestrator, task, args, kwargs, parsed)
            return
        orchestrator.worker_lost(parsed.hostname, parsed.task_ids)

    return worker_lost


def _recover(app: Celery, orchestrator: Orchestrator) -> TaskBody:
    def recover(task: Any, *args: Any, **kwargs: Any) -> dict[str, int] | None:
        malformed = parse_no_arguments(args, kwargs, RECOVER_TASK)
        if malformed is not None:
            _refuse(orchestrator, task, args, kwargs, malformed)
            return None
        try:
            report = orchestrator.recover(orchestrator.stall_timeout)
        except StoreUnavailable as exc:
            # Expected while the database restarts; the next sweep finds what this one missed.
            interval = app.conf.beat_schedule.get("sagaflow-recover", {}).get("schedule")
            when = f"in {interval:g}s" if isinstance(interval, float | int) else "as scheduled"
            logger.warning("recovery sweep skipped: %s; next sweep %s", one_line(exc), when)
            return None
        return {
            "started": len(report.started),
            "timed_out": len(report.timed_out),
            "retried": len(report.retried),
            "deadline_exceeded": len(report.deadline_exceeded),
            "redriven": len(report.redriven),
            "republished": len(report.republished),
        }

    return recover


def _operator(orchestrator: Orchestrator) -> TaskBody:
    def operator(task: Any, *args: Any, **kwargs: Any) -> None:
        parsed = parse_operator(args, kwargs)
        if isinstance(parsed, Malformed):
            _refuse(orchestrator, task, args, kwargs, parsed)
            return
        orchestrator.operate(
            parsed.action, parsed.saga_id, parsed.step, parsed.reason, parsed.applied, parsed.result
        )

    return operator


def one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())  # driver messages span lines
