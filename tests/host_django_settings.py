"""A Django-style settings module: Celery's settings under the CELERY_ namespace."""

from __future__ import annotations

import os

CELERY_BROKER_URL = os.environ["SAGAFLOW_BROKER_URL"]
CELERY_TASK_SERIALIZER = "pickle"
CELERY_RESULT_SERIALIZER = "pickle"
CELERY_ACCEPT_CONTENT = os.environ.get("HOST_ACCEPT_CONTENT", "pickle,json").split(",")
CELERY_TASK_ACKS_LATE = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 4
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
SAGAFLOW_QUEUE = os.environ["SAGAFLOW_QUEUE"]
