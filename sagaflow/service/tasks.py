"""What a service worker needs from sagaflow: an app factory and the failure reporter.

Service workers never touch the saga store. When a step task fails (after its own Celery
retries), Celery calls sagaflow's errback inline in the failing worker; the errback sends the
error's type and message to the orchestrator queue. A step whose task name this worker does not
know is reported the same way, so a typo in a definition fails the saga instead of hanging it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore, Reject
from celery.exceptions import Retry as CeleryRetry

from sagaflow.config import DEFAULT_MAX_MESSAGE_BYTES, Settings
from sagaflow.core.definitions import Retry
from sagaflow.core.messages import Malformed, OutcomeMessage, parse_published_errback
from sagaflow.core.protocol import (
    ERRBACK_TASK,
    STEP_FAILED_TASK,
    STEP_SUCCEEDED_TASK,
    error_payload,
    find_signature,
    message_embed,
    strict_json,
)
from sagaflow.core.vocabulary import ErrorType
from sagaflow.errors import NonRetryable as NonRetryable
from sagaflow.messaging.app import create_app, log_saga_fields
from sagaflow.messaging.liveness import install_beacon
from sagaflow.messaging.quarantine_records import task_message_record
from sagaflow.messaging.screening import (
    MessageScreen,
    UnknownTaskReporter,
    install_screen,
    send_quarantine_record,
)
from sagaflow.service.host_app import install_step_support

logger = logging.getLogger(__name__)

_OUTCOME_KEYS = ("saga_id", "step", "position", "phase", "attempt")


class SagaStepTask(Task):  # type: ignore[misc]
    """Task base class for saga steps (`create_service_app` uses it for every task, and
    `install_service_support` puts it under every task of an existing app).

    When the task runs as a saga step it applies the step's retry policy with Celery's own
    `self.retry()`, reports how many runs it took, and makes its return value strict JSON
    before the callback is published, so a result kombu cannot encode (a set, an object) cannot
    turn a step whose work is done into a failure. Other calls of the task are left alone.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        callback = _step_callback(self.request)
        if callback is None:
            return super().__call__(*args, **kwargs)
        try:
            result = super().__call__(*args, **kwargs)
        except (NonRetryable, CeleryRetry, Reject, Ignore):
            raise
        except Exception as exc:
            delay = _retry_delay(args, exc, self.request.retries)
            if delay is None:
                raise
            # max_retries=None would mean the task's own default (3), not "unlimited".
            raise self.retry(
                exc=exc, countdown=delay, max_retries=self.request.retries + 1
            ) from exc
        callback.setdefault("kwargs", {})["tries"] = self.request.retries + 1
        return strict_json(result)


def _step_callback(request: Any) -> dict[str, Any] | None:
    return find_signature(getattr(request, "callbacks", None), STEP_SUCCEEDED_TASK)


def _retry_delay(args: tuple[Any, ...], exc: Exception, retries: int) -> float | None:
    """Seconds before the next run if the step's policy retries `exc`, else None."""
    context = args[0] if args and isinstance(args[0], dict) else {}
    policy = Retry.from_json(context.get("retry"))
    if policy is None or retries + 1 >= policy.max_attempts:
        return None
    # `on` names classes; a subclass counts (ConnectionError covers ConnectionResetError).
    if not policy.covers(type(exc)):
        return None
    delay = min(policy.backoff * (2**retries), policy.backoff_max)
    return random.uniform(delay / 2, delay) if policy.jitter else delay


def create_service_app(service: str, settings: Settings | None = None) -> Celery:
    """A Celery app for one service; its tasks go to the queue named after the service and
    their results are cleaned into strict JSON when they run as saga steps."""
    settings = settings or Settings.from_env()
    app = create_app(service, settings, task_cls=SagaStepTask)
    app.conf.task_default_queue = service
    install_service_support(app, settings.queue, max_message_bytes=settings.max_message_bytes)
    return app


def install_service_support(
    app: Celery, orchestrator_queue: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> None:
    """Make `app`'s workers run saga steps: the step's retry policy, strict JSON results, late
    acknowledgement with requeue when a worker dies, and outcomes sent to the orchestrator as
    JSON, whatever the app's own settings (sagaflow.service.host_app); sagaflow's errback; and
    the message screen, so that a message none of its tasks can take is quarantined, not fatal.

    Raises ConfigurationError if the app's settings would keep steps from arriving or reporting.
    """
    install_step_support(app, SagaStepTask)
    report = _failure_reporter(app, orchestrator_queue)
    # Not bound: Celery runs an errback inline only if it is not (celery/backends/base.py).
    # shared=False: registered on this app only, not on every app the process creates later.
    app.task(name=ERRBACK_TASK, ignore_result=True, acks_late=True, shared=False)(
        _errback(app, orchestrator_queue, report)
    )
    unknown = _unknown_task_reporter(report)
    install_screen(app, MessageScreen(app, orchestrator_queue, max_message_bytes, unknown))
    install_beacon(app)
    log_saga_fields()  # the saga's fields on the records; the host's log format stays its own


Report = Callable[[dict[str, Any], dict[str, Any]], None]  # (outcome, error) to the orchestrator


def _failure_reporter(app: Celery, orchestrator_queue: str) -> Report:
    def report(outcome: dict[str, Any], error: dict[str, Any]) -> None:
        # Celery swallows an errback's exception and acknowledges the step anyway, so a report
        # that cannot be published would be lost: keep retrying while the broker is away.
        app.send_task(
            STEP_FAILED_TASK,
            kwargs={**outcome, "error": strict_json(error)},
            queue=orchestrator_queue,
            serializer="json",
            retry=True,
            retry_policy={
                "max_retries": None,
                "interval_start": 0.5,
                "interval_step": 1,
                "interval_max": 10,
            },
        )

    return report


def _errback(app: Celery, orchestrator_queue: str, report: Report) -> Callable[..., None]:
    def errback(*args: Any, **kwargs: Any) -> None:
        if args and isinstance(args[0], str):
            # Published form: the failing worker could not run us inline, so only the id is known.
            parsed = parse_published_errback(args, kwargs)
            if isinstance(parsed, Malformed):
                request = app.tasks[ERRBACK_TASK].request
                _quarantine_task_message(app, orchestrator_queue, request, args, kwargs, parsed)
                return
            outcome, error = _published_failure(*parsed)
        else:
            outcome, error = _inline_failure(args, kwargs)
        report(outcome, error)

    return errback


def _published_failure(
    task_id: str, outcome_message: OutcomeMessage
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The outcome and error of a step whose failure was published: its error is not known."""
    outcome = {key: getattr(outcome_message, key) for key in _OUTCOME_KEYS}
    outcome["phase"] = outcome_message.phase.value
    error: dict[str, Any] = {
        "type": ErrorType.UNKNOWN_ERROR.value,
        "message": (
            f"task {task_id} failed on a worker without sagaflow.service; its error is "
            "not known (install sagaflow's service support on that worker)"
        ),
        "task_id": task_id,
    }
    return outcome, error


def _inline_failure(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The outcome and error of a step whose errback Celery ran inline, with the request, the
    exception and its traceback."""
    outcome = {key: kwargs.get(key) for key in _OUTCOME_KEYS}
    request, exc, traceback = [*args, None, None, None][:3]
    failed_id = getattr(request, "id", None)
    outcome["tries"] = (getattr(request, "retries", 0) or 0) + 1
    if isinstance(exc, BaseException):
        error = error_payload(exc, traceback, failed_id)
        if isinstance(exc, NonRetryable):
            error["non_retryable"] = True  # a retriable step escalates, not loops
    else:
        error = {
            "type": ErrorType.UNKNOWN_ERROR.value,
            "message": repr(exc),
            "task_id": failed_id,
        }
    return outcome, error


def _unknown_task_reporter(report: Report) -> UnknownTaskReporter:
    def report_unknown(
        message: Any, body: Any, name: str, task_id: str, queue: str | None
    ) -> str | None:
        # A step whose task this worker does not know fails its saga at once (a typo in a
        # definition must not hang it); the message itself is kept in the quarantine.
        outcome = _sagaflow_outcome(body)
        if outcome is None:
            return None
        error: dict[str, Any] = {
            "type": ErrorType.NOT_REGISTERED.value,
            "message": (
                f"no task named {name!r} is registered on the worker"
                + (f" consuming queue {queue!r}" if queue else "")
            ),
            "task_id": task_id,
        }
        report(outcome, error)
        return (
            f"the step was reported failed to saga {outcome.get('saga_id')}: replaying the "
            "message runs it outside its saga"
        )

    return report_unknown


def _quarantine_task_message(
    app: Celery, orchestrator_queue: str, request: Any, args: Any, kwargs: Any, why: Malformed
) -> None:
    """Quarantine the message a task is running: its arguments are not what it takes."""
    record = task_message_record(request, args, kwargs, why)
    send_quarantine_record(app, orchestrator_queue, record)
    logger.warning(
        "quarantined message %s (task %r): %s; see `sagaflow quarantine show %s`",
        record.task_id,
        record.task,
        why.reason,
        record.id,
    )


def _sagaflow_outcome(body: Any) -> dict[str, Any] | None:
    """The (saga, step, phase, attempt) a step message's sagaflow errback carries, if any."""
    embed = message_embed(body)
    errback = find_signature(embed.get("errbacks"), ERRBACK_TASK) if embed else None
    if errback is None:
        return None
    kwargs = errback.get("kwargs") or {}
    return {key: kwargs.get(key) for key in _OUTCOME_KEYS}
