"""The saga store: SQL through SQLAlchemy, the source of truth. Knows nothing of Celery."""
