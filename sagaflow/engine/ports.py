"""What the engine needs from the outside world, as protocols: a way to send a step's task and
a way to publish a saga's outcome events. sagaflow.messaging implements both on Celery and
kombu; the recording versions here let the engine run, and be tested, with no broker."""

from __future__ import annotations

from typing import Any, Protocol

from sagaflow.core.machine import DispatchTask


class Dispatcher(Protocol):
    def dispatch(self, command: DispatchTask) -> None:
        """Send the step's task to its service queue; its outcome comes back as an event."""


class EventPublisher(Protocol):
    def publish(self, name: str, payload: dict[str, Any]) -> None: ...


class RecordingDispatcher:
    """Keeps dispatched steps in memory; the caller feeds their outcomes back by hand."""

    def __init__(self) -> None:
        self.dispatched: list[DispatchTask] = []

    def dispatch(self, command: DispatchTask) -> None:
        self.dispatched.append(command)


class RecordingPublisher:
    """Keeps events in memory; for tests and embedding."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish(self, name: str, payload: dict[str, Any]) -> None:
        self.published.append((name, payload))
