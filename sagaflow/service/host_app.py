"""Saga steps on a Celery app its own project configured (Django, Flask, a plain app).

`create_service_app` gives every task what a saga step needs through the app's settings. An
existing app keeps its settings, so these guarantees are given to the steps themselves, and to
nothing else:
- every task runs through `SagaStepTask.__call__`, which applies the step's `Retry` policy and
  makes its result strict JSON when, and only when, the task runs as a saga step;
- a step message is acknowledged after its task ran and requeued if the worker dies, whatever
  the task's own `acks_late`: Celery reads acks from the task, so the worker's consumer takes
  step messages through a second strategy built on a copy of the task with late acks (the
  host's own calls of the same task keep the task's settings);
- what a step sends back to the orchestrator is JSON (the callbacks carry `serializer="json"`).
Settings under which a step could not arrive or report are refused when the app is installed
and again when a worker starts (the app's configuration may be read late).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery, Task, bootsteps
from celery.worker.consumer.tasks import Tasks
from kombu.serialization import prepare_accept_content

from sagaflow.core.protocol import STEP_SUCCEEDED_TASK, find_signature, message_embed
from sagaflow.errors import ConfigurationError

# What a step message's request needs, whatever the task says.
STEP_ACKS = {"acks_late": True, "reject_on_worker_lost": True, "acks_on_failure_or_timeout": True}


def refusal(app: Celery) -> str | None:
    """Why steps cannot run on `app` as configured, with what to change; None if they can."""
    accepted = prepare_accept_content(app.conf.accept_content or ["json"])  # type: ignore[no-untyped-call]
    if "application/json" not in accepted:
        return (
            f"accept_content = {list(app.conf.accept_content)!r} refuses JSON, and every saga "
            "step message is JSON: add 'json' to accept_content"
        )
    if app.conf.task_always_eager:
        return (
            "task_always_eager is set: eager calls run in the caller, not on a worker, so no "
            "saga step could be acknowledged, retried or reported; unset it on service apps"
        )
    return None


def check_host_app(app: Celery) -> None:
    problem = refusal(app)
    if problem is not None:
        raise ConfigurationError(
            f"sagaflow cannot run saga steps on Celery app {app.main!r}: {problem}"
        )


def make_step_aware(task: Task, step_task_class: type[Task]) -> None:
    """Run `task` through `step_task_class.__call__` (it leaves calls outside a saga alone)."""
    cls = type(task)
    if issubclass(cls, step_task_class) or task.name.startswith("celery."):
        return
    task.__class__ = type(
        cls.__name__,
        (step_task_class, cls),
        {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__},
    )


def is_step_message(message: Any) -> bool:
    """True if `message` runs a saga step: its success callback reports to the orchestrator."""
    try:
        body = message.decode()  # decoded once already by the screen; kombu keeps it
    except Exception:
        return False
    embed = message_embed(body)
    return (
        embed is not None
        and find_signature(embed.get("callbacks"), STEP_SUCCEEDED_TASK) is not None
    )


def _late_ack_copy(task: Task) -> Task:
    """`task` with STEP_ACKS, for the requests of step messages only."""
    copy: Task = object.__new__(type(task))
    copy.__dict__.update(task.__dict__)
    for key, value in STEP_ACKS.items():
        setattr(copy, key, value)
    return copy


def _needs_late_acks(task: Task) -> bool:
    return any(getattr(task, key) != value for key, value in STEP_ACKS.items())


Strategy = Callable[..., Any]


def _routed(own: Strategy, for_steps: Strategy) -> Strategy:
    def strategy(message: Any, *args: Any, **kwargs: Any) -> Any:
        chosen = for_steps if is_step_message(message) else own
        return chosen(message, *args, **kwargs)

    strategy.sagaflow_routed = True  # type: ignore[attr-defined]
    return strategy


def install_step_support(app: Celery, step_task_class: type[Task]) -> None:
    """Give `app`'s tasks what saga steps need when a worker of `app` starts."""
    check_host_app(app)
    if getattr(app, "sagaflow_step_support", False):
        return
    app.sagaflow_step_support = True

    class StepAwareTasks(bootsteps.Step):  # type: ignore[misc]
        """Before the pool starts (its processes fork with the tasks as they are then)."""

        name = "sagaflow.step_aware_tasks"

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            check_host_app(app)
            for task in app.tasks.values():
                make_step_aware(task, step_task_class)
            super().__init__(worker, **kwargs)

    class LateAcksForSteps(bootsteps.StartStopStep):  # type: ignore[misc]
        """Routes step messages to late-ack strategies; again after each connection restart,
        which rebuilds the consumer's strategies."""

        requires = (Tasks,)
        name = "sagaflow.late_acks_for_steps"

        def start(self, consumer: Any) -> None:
            for name, own in list(consumer.strategies.items()):
                task = app.tasks.get(name)
                if task is None or getattr(own, "sagaflow_routed", False):
                    continue
                if not _needs_late_acks(task):
                    continue
                for_steps = _late_ack_copy(task).start_strategy(app, consumer)
                consumer.strategies[name] = _routed(own, for_steps)

    app.steps["worker"].add(StepAwareTasks)
    app.steps["consumer"].add(LateAcksForSteps)
