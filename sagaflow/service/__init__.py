"""What a service worker loads: its Celery app, the step task base and, on request, EffectLog.

No saga store and no SQLAlchemy: EffectLog (for the service's own database) is loaded only when
it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sagaflow.errors import NonRetryable
from sagaflow.service.tasks import (
    SagaStepTask,
    create_service_app,
    install_service_support,
)

if TYPE_CHECKING:
    from sagaflow.service.effects import EffectLog, effect_log_table

__all__ = [
    "EffectLog",
    "NonRetryable",
    "SagaStepTask",
    "create_service_app",
    "effect_log_table",
    "install_service_support",
]


def __getattr__(name: str) -> Any:
    if name in ("EffectLog", "effect_log_table"):
        from sagaflow.service import effects

        return getattr(effects, name)
    raise AttributeError(f"module 'sagaflow.service' has no attribute {name!r}")
