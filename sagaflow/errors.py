"""sagaflow's exceptions: one root, each docstring is its meaning."""

from __future__ import annotations


class SagaflowError(Exception):
    """Base class of every error sagaflow raises."""


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


class ConcurrencyConflict(SagaflowError):
    """Another process changed the saga first; reload and apply the event again."""


class SagaTimeout(SagaflowError):
    """A saga did not reach a terminal state within the time waited."""


class ConfigurationError(SagaflowError):
    """sagaflow's configuration is missing or invalid."""


class QuarantinedMessageNotFound(SagaflowError):
    """No quarantined message has this id (or the prefix given matches several)."""
