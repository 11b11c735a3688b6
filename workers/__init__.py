"""An example business for sagaflow: an order saga over inventory, payments and shipping.

Each service is its own Celery app and queue (`celery -A workers.payments worker -Q payments`)
and keeps its own state in its own tables, so compensations visibly restore it.
"""
