"""sagaflow: saga orchestration on Celery, with saga state in SQL."""

from sagaflow.client import BrokerUnavailable, SagaClient
from sagaflow.config import Settings
from sagaflow.definitions import (
    Phase,
    Registry,
    Retry,
    Saga,
    SagaOrchestrator,
    SagaState,
    Step,
    StepStatus,
    load_definitions,
)
from sagaflow.effects import EffectLog, effect_log_table
from sagaflow.errors import (
    ConcurrencyConflict,
    ConfigurationError,
    DefinitionError,
    InvalidSagaInput,
    SagaflowError,
    SagaNotFound,
    SagaTimeout,
    StoreUnavailable,
    UnknownSagaType,
)
from sagaflow.machine import ErrorInfo, SagaRecord, StepRecord
from sagaflow.service import (
    NonRetryable,
    SagaStepTask,
    create_service_app,
    install_service_support,
)

__version__ = "0.1.0"

__all__ = [
    "BrokerUnavailable",
    "ConcurrencyConflict",
    "ConfigurationError",
    "DefinitionError",
    "EffectLog",
    "ErrorInfo",
    "InvalidSagaInput",
    "NonRetryable",
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
    "Step",
    "StepRecord",
    "StepStatus",
    "StoreUnavailable",
    "UnknownSagaType",
    "__version__",
    "create_service_app",
    "effect_log_table",
    "install_service_support",
    "load_definitions",
]
