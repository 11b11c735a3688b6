"""Celery settings for every process in this repository (orchestrator, services, producers).

sagaflow's apps load this module by name, as Celery does (`SAGAFLOW_CELERY_CONFIG` picks
another); so can Celery's own tools (`celery --config celeryconfig ...`, Flower). Connections come
from the environment, read by sagaflow.config (sagaflow's apps always take them from there):

    SAGAFLOW_BROKER_URL    broker; default filesystem:// under .sagaflow/ (no server needed)
    SAGAFLOW_DATABASE_URL  saga store; default sqlite:///.sagaflow/sagaflow.db
    SAGAFLOW_DEFINITIONS   modules with saga definitions, comma-separated
    SAGAFLOW_RESULT_BACKEND  optional; sagaflow itself needs no result backend

Add your own Celery settings at the bottom; they override sagaflow's defaults.
"""

from sagaflow.config import Settings, celery_settings

globals().update(celery_settings(Settings.from_env()))

# The settings sagaflow relies on, spelled out (the same values as its defaults):
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]  # never pickle
task_acks_late = True  # acknowledge after the task ran, not before
task_reject_on_worker_lost = True  # a killed worker's task is redelivered, not dropped
worker_prefetch_multiplier = 1
worker_send_task_events = True  # Flower sees every step task (orchestrator: see README)
task_send_sent_event = False  # True shows queued tasks in Flower, at one message per task
