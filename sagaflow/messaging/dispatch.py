"""Sending a step's task to its service queue with the callbacks that report its outcome."""

from __future__ import annotations

from celery import Celery

from sagaflow.core.machine import DispatchTask
from sagaflow.core.protocol import (
    ERRBACK_TASK,
    STEP_SUCCEEDED_TASK,
    display_repr,
    outcome_kwargs,
)

# The service worker publishes a step's success callback after the step's work is done. Celery
# retries that publish 3 times within about a second and then fires the errback, which would
# report a step that took effect as failed (and leave it uncompensated) whenever the broker is
# away a little longer. Keep retrying through an outage instead: about an hour.
CALLBACK_RETRY_POLICY = {
    "max_retries": 720,
    "interval_start": 0.5,
    "interval_step": 0.5,
    "interval_max": 5,
}


def send_step(app: Celery, orchestrator_queue: str, command: DispatchTask) -> None:
    """Send a step's task to its service queue, with the callbacks that report its outcome to
    `orchestrator_queue`: the success callback as a message, the errback run inline by the
    failing worker (sagaflow.service.tasks), which then sends the failure as a message."""
    outcome = outcome_kwargs(
        command.saga_id,
        command.position,
        command.phase.value,
        command.attempt,
        str(command.context.get("step")),
    )
    outcome_repr = display_repr(outcome)
    # serializer: the service worker publishes these with its own app, whose serializer may be
    # pickle; the orchestrator takes JSON only.
    on_success = app.signature(
        STEP_SUCCEEDED_TASK,
        kwargs=outcome,
        queue=orchestrator_queue,
        retry_policy=CALLBACK_RETRY_POLICY,
        kwargsrepr=outcome_repr,
        serializer="json",
    )
    on_failure = app.signature(
        ERRBACK_TASK,
        kwargs=outcome,
        queue=orchestrator_queue,
        kwargsrepr=outcome_repr,
        serializer="json",
    )
    app.send_task(
        command.task_name,
        args=[command.context],
        queue=command.queue,
        task_id=command.task_id,
        link=on_success,
        link_error=on_failure,
        retry=True,
        argsrepr=display_repr([command.context]),
        kwargsrepr="{}",
    )


class CeleryDispatcher:
    """The engine's Dispatcher on a Celery app: outcomes come back to `orchestrator_queue`."""

    def __init__(self, app: Celery, orchestrator_queue: str) -> None:
        self.app = app
        self.orchestrator_queue = orchestrator_queue

    def dispatch(self, command: DispatchTask) -> None:
        send_step(self.app, self.orchestrator_queue, command)
