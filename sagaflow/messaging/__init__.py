"""Celery and kombu: the app factory, transports, sending steps, the orchestrator's tasks,
message screening, worker liveness and event publishing."""
