"""What the engine needs from the outside world, as protocols: a way to send a step's task, a
way to publish a saga's outcome events, and a quarantine for refused messages. sagaflow.messaging
implements the first two on Celery and kombu, sagaflow.store.quarantine the third; the recording
versions here let the engine run, and be tested, with no broker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from sagaflow.core.machine import DispatchTask

if TYPE_CHECKING:
    from sagaflow.core.quarantine import QuarantinedMessage


class Dispatcher(Protocol):
    def dispatch(self, command: DispatchTask) -> None:
        """Send the step's task to its service queue; its outcome comes back as an event."""


class EventPublisher(Protocol):
    def publish(self, name: str, payload: dict[str, Any]) -> None: ...


class Quarantine(Protocol):
    def add(self, record: QuarantinedMessage) -> bool:
        """Keep a refused message for an operator; False if it is kept already (or refused)."""


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
