"""sagaflow's exceptions: every exception class of the package, under one root. Each docstring
is its meaning."""

from __future__ import annotations

from typing import Any


class SagaflowError(Exception):
    """Base class of every error sagaflow raises.

    `details` (JSON) is data about the failure for programs rather than people: raised in a
    saga step, it travels with the step's error (`ErrorInfo.details`).
    """

    def __init__(self, *args: object, details: Any = None) -> None:
        super().__init__(*args)
        self.details = details


class DefinitionError(SagaflowError):
    """A saga definition is invalid (caught at registration, before any saga runs)."""


class UnknownSagaType(SagaflowError):
    """No saga definition is registered under this saga type."""


class InvalidSagaInput(SagaflowError):
    """Saga input must be a JSON object (a dict of JSON-serialisable values)."""


class SagaNotFound(SagaflowError):
    """No saga with this id is in the store."""


class StoreUnavailable(SagaflowError):
    """The saga store could not be reached; the operation may be retried."""


class StoreNotMigrated(StoreUnavailable):
    """The store's database has no sagaflow tables: run `sagaflow db upgrade`. A start is
    refused (kept nowhere else): nothing could ever record it there."""


class OutboxUnavailable(StoreUnavailable):
    """Neither the saga store nor the producer's local outbox could keep the start: nothing was
    started and no id was given."""


class BrokerUnavailable(SagaflowError):
    """The broker could not be reached: nothing was sent."""


class ConcurrencyConflict(SagaflowError):
    """Another process changed the saga first; reload and apply the event again."""


class InvalidOperation(SagaflowError):
    """The operator action does not apply to the saga in its current state."""


class SagaTimeout(SagaflowError):
    """A saga did not reach a terminal state within the time waited."""


class ConfigurationError(SagaflowError):
    """sagaflow's configuration is missing or invalid."""


class QuarantinedMessageNotFound(SagaflowError):
    """No quarantined message has this id (or the prefix given matches several)."""


class NonRetryable(SagaflowError):
    """Raise (or subclass) it in a step to fail at once, whatever the step's retry policy."""


class BadQuery(SagaflowError):
    """A dashboard filter or paging argument that cannot be used: answered with 400 and the
    reason."""


class BadInput(SagaflowError):
    """Text given on the command line (or in a file) that is not acceptable JSON."""


class WorkerStartError(SagaflowError):
    """A worker process did not come up; the message carries the end of its log."""


class StackStopRequested(SagaflowError):
    """SIGINT or SIGTERM reached `sagaflow stack` while it waited: it stops its processes."""
