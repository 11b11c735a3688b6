"""A Celery app its own project configured, as real ones are, then given sagaflow's support.

Pickle first (its own tasks' messages), prefetch 4, early acks, its own routes: none of it is
changed by `install_service_support`, and its saga steps still get every guarantee.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from sagaflow import install_service_support
from tests.host_steps import register_steps

app = Celery("shop")
app.conf.update(
    broker_url=os.environ["SAGAFLOW_BROKER_URL"],
    task_serializer="pickle",
    result_serializer="pickle",
    accept_content=["pickle", "json"],
    worker_prefetch_multiplier=4,
    task_acks_late=False,
    task_routes={"shop.*": {"queue": "shop"}},
    broker_connection_retry_on_startup=True,
)
install_service_support(app, os.environ["SAGAFLOW_QUEUE"])


register_steps(app, "host")


@app.task(name="shop.own")
def own(order: dict[str, Any]) -> str:
    """One of the project's own tasks, not a saga step."""
    return f"done {order}"
