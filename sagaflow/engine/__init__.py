"""The engine: the Orchestrator and recovery, built from a store, a registry, a Dispatcher and
an EventPublisher. No Celery here (sagaflow.messaging provides both on Celery)."""

from sagaflow.engine.orchestrator import Orchestrator, RecoveryReport
from sagaflow.engine.ports import (
    Dispatcher,
    EventPublisher,
    RecordingDispatcher,
    RecordingPublisher,
)

__all__ = [
    "Dispatcher",
    "EventPublisher",
    "Orchestrator",
    "RecordingDispatcher",
    "RecordingPublisher",
    "RecoveryReport",
]
