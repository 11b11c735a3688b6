"""The orchestrator's Celery app, for `celery -A sagaflow.worker worker -Q sagaflow`.

Configured from SAGAFLOW_* environment variables (see sagaflow.config) and, if present, the
`celeryconfig` module. Saga definitions are imported from SAGAFLOW_DEFINITIONS.
"""

from sagaflow.messaging.orchestrator_app import create_orchestrator_app

app = create_orchestrator_app()
