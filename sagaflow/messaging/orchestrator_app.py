"""The orchestrator's Celery app (`celery -A sagaflow.worker worker -Q sagaflow`): an engine
built from the store, the definitions, a Celery dispatcher and a kombu publisher, with its tasks,
its recovery schedule and its watch on service workers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, signals

from sagaflow.config import Settings
from sagaflow.core.definitions import Registry, load_definitions
from sagaflow.core.protocol import RECOVER_TASK, WORKER_LOST_TASK
from sagaflow.engine.orchestrator import Orchestrator
from sagaflow.engine.ports import EventPublisher
from sagaflow.errors import SagaflowError
from sagaflow.messaging.app import create_app
from sagaflow.messaging.dispatch import CeleryDispatcher
from sagaflow.messaging.events import KombuEventPublisher
from sagaflow.messaging.liveness import LivenessMonitor
from sagaflow.messaging.orchestrator_tasks import install_orchestrator_tasks
from sagaflow.store.factory import open_store
from sagaflow.store.protocol import SagaStore
from sagaflow.store.quarantine import QuarantineStore

logger = logging.getLogger(__name__)

_ORCHESTRATOR = "sagaflow_orchestrator"


def orchestrator_of(app: Celery) -> Orchestrator:
    """The engine behind an app made by create_orchestrator_app."""
    orchestrator = getattr(app, _ORCHESTRATOR, None)
    if not isinstance(orchestrator, Orchestrator):
        raise TypeError(f"{app!r} was not made by sagaflow's create_orchestrator_app")
    return orchestrator


def create_orchestrator_app(
    settings: Settings | None = None,
    *,
    registry: Registry | None = None,
    store: SagaStore | None = None,
    publisher: EventPublisher | None = None,
) -> Celery:
    """The orchestrator's Celery app: `celery -A sagaflow.worker worker -Q sagaflow`."""
    settings = settings or Settings.from_env()
    app = create_app("sagaflow", settings)
    app.conf.task_default_queue = settings.queue
    # `celery worker -E` still turns them on for one run.
    app.conf.worker_send_task_events = settings.orchestrator_task_events
    if registry is None:
        registry = load_definitions(settings.definitions)
    store = store or open_store(settings.database_url)
    orchestrator = Orchestrator(
        dispatcher=CeleryDispatcher(app, settings.queue),
        store=store,
        registry=registry,
        publisher=publisher or KombuEventPublisher(app, settings.events_exchange),
        queue=settings.queue,
        max_input_bytes=settings.max_input_bytes,
        max_message_bytes=settings.max_message_bytes,
        quarantine=QuarantineStore(store),
    )
    orchestrator.stall_timeout = settings.stall_timeout
    setattr(app, _ORCHESTRATOR, orchestrator)
    app.conf.beat_schedule = {
        "sagaflow-recover": {
            "task": RECOVER_TASK,
            "schedule": settings.recover_interval,
            "options": {"queue": settings.queue, "expires": settings.recover_interval},
        }
    }
    install_orchestrator_tasks(app, orchestrator)

    def _check_store(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            _log_store_status(orchestrator)

    signals.worker_ready.connect(_check_store, weak=False)
    lost_after = settings.worker_lost_seconds
    if lost_after:
        monitor = LivenessMonitor(app, _report_lost(app, settings.queue), lost_after)

        def _watch(sender: Any = None, **_: Any) -> None:
            if getattr(sender, "app", None) is app:
                monitor.start()

        def _stop_watching(sender: Any = None, **_: Any) -> None:
            if getattr(sender, "app", None) is app:
                monitor.stop()

        signals.worker_ready.connect(_watch, weak=False)
        signals.worker_shutdown.connect(_stop_watching, weak=False)

    return app


def _report_lost(app: Celery, queue: str) -> Callable[[str, int, list[str]], None]:
    def report(hostname: str, pid: int, task_ids: list[str]) -> None:
        app.send_task(
            WORKER_LOST_TASK,
            kwargs={"hostname": hostname, "pid": pid, "task_ids": task_ids},
            queue=queue,
            serializer="json",
            retry=True,
        )

    return report


def _log_store_status(orchestrator: Orchestrator) -> None:
    from sagaflow.store.migrate import current_revision, head_revision

    store = orchestrator.store
    try:
        current = current_revision(store)
    except SagaflowError as exc:
        logger.error("saga store not reachable yet (%s); transitions will be retried", exc)
        return
    except Exception as exc:
        logger.error("saga store %r not usable (%s); transitions will be retried", store, exc)
        return
    head = head_revision()
    if current != head:
        logger.error(
            "saga store %r schema is at %s, not %s: run `sagaflow db upgrade`; transitions are "
            "retried until then",
            store,
            current,
            head,
        )
    else:
        logger.info(
            "sagaflow orchestrator ready: store %r, saga types %s",
            store,
            ", ".join(orchestrator.registry.saga_types) or "none",
        )
