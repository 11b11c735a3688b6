"""sagaflow: saga orchestration on Celery, with saga state in SQL.

The public names below are loaded on first use, so `import sagaflow` stays light and a service
worker that needs only `create_service_app` never loads the saga store. The subpackages are the
layers: core (definitions and the pure state machine), store (the SQL store), engine (the
orchestrator), messaging (Celery and kombu), service (what a service worker loads), client
(producers), ops (CLI, dashboard, metrics) and devstack (the demo and the local stack).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sagaflow.client.async_client import AsyncSagaClient
    from sagaflow.client.saga_client import Durability, SagaClient, StartReceipt
    from sagaflow.config import Settings
    from sagaflow.core.definitions import (
        Registry,
        Retry,
        Saga,
        SagaOrchestrator,
        Step,
        load_definitions,
    )
    from sagaflow.core.records import ErrorInfo, SagaRecord, StepRecord
    from sagaflow.core.vocabulary import (
        ErrorType,
        HistoryEvent,
        OnTimeout,
        Phase,
        SagaState,
        StepStatus,
    )
    from sagaflow.engine.ports import EventPublisher
    from sagaflow.errors import (
        BrokerUnavailable,
        ConcurrencyConflict,
        ConfigurationError,
        DefinitionError,
        InvalidOperation,
        InvalidSagaInput,
        NonRetryable,
        OutboxUnavailable,
        SagaflowError,
        SagaNotFound,
        SagaTimeout,
        StoreNotMigrated,
        StoreUnavailable,
        UnknownSagaType,
    )
    from sagaflow.messaging.orchestrator_app import create_orchestrator_app
    from sagaflow.service.effects import EffectLog, effect_log_table
    from sagaflow.service.tasks import SagaStepTask, create_service_app, install_service_support

__version__ = "0.1.0"

_HOMES = {
    "sagaflow.client.async_client": ("AsyncSagaClient",),
    "sagaflow.client.saga_client": ("Durability", "SagaClient", "StartReceipt"),
    "sagaflow.config": ("Settings",),
    "sagaflow.core.definitions": (
        "Registry",
        "Retry",
        "Saga",
        "SagaOrchestrator",
        "Step",
        "load_definitions",
    ),
    "sagaflow.core.records": ("ErrorInfo", "SagaRecord", "StepRecord"),
    "sagaflow.core.vocabulary": (
        "ErrorType",
        "HistoryEvent",
        "OnTimeout",
        "Phase",
        "SagaState",
        "StepStatus",
    ),
    "sagaflow.engine.ports": ("EventPublisher",),
    "sagaflow.errors": (
        "BrokerUnavailable",
        "ConcurrencyConflict",
        "ConfigurationError",
        "DefinitionError",
        "InvalidOperation",
        "InvalidSagaInput",
        "NonRetryable",
        "OutboxUnavailable",
        "SagaflowError",
        "SagaNotFound",
        "SagaTimeout",
        "StoreNotMigrated",
        "StoreUnavailable",
        "UnknownSagaType",
    ),
    "sagaflow.messaging.orchestrator_app": ("create_orchestrator_app",),
    "sagaflow.service.effects": ("EffectLog", "effect_log_table"),
    "sagaflow.service.tasks": ("SagaStepTask", "create_service_app", "install_service_support"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "AsyncSagaClient",
    "BrokerUnavailable",
    "ConcurrencyConflict",
    "ConfigurationError",
    "DefinitionError",
    "Durability",
    "EffectLog",
    "ErrorInfo",
    "ErrorType",
    "EventPublisher",
    "HistoryEvent",
    "InvalidOperation",
    "InvalidSagaInput",
    "NonRetryable",
    "OnTimeout",
    "OutboxUnavailable",
    "Phase",
    "Registry",
    "Retry",
    "Saga",
    "SagaClient",
    "SagaNotFound",
    "SagaOrchestrator",
    "SagaRecord",
    "SagaState",
    "SagaStepTask",
    "SagaTimeout",
    "SagaflowError",
    "Settings",
    "StartReceipt",
    "Step",
    "StepRecord",
    "StepStatus",
    "StoreNotMigrated",
    "StoreUnavailable",
    "UnknownSagaType",
    "__version__",
    "create_orchestrator_app",
    "create_service_app",
    "effect_log_table",
    "install_service_support",
    "load_definitions",
]


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'sagaflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
