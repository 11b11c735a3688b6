"""A plain Celery worker without sagaflow's service support (JSON only, as sagaflow requires).

Its failing step reaches the orchestrator through the published errback, which carries only the
failed task's id.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

app = Celery("plain", set_as_current=False)
app.conf.update(
    broker_url=os.environ["SAGAFLOW_BROKER_URL"],
    broker_transport_options={
        "data_folder_in": os.path.join(os.environ["SAGAFLOW_HOME"], "broker"),
        "data_folder_out": os.path.join(os.environ["SAGAFLOW_HOME"], "broker"),
        "control_folder": os.path.join(os.environ["SAGAFLOW_HOME"], "broker-control"),
        "polling_interval": 0.01,
    }
    if os.environ["SAGAFLOW_BROKER_URL"].startswith("filesystem")
    else {},
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_default_queue="plain",
)


@app.task(name="plain.fail")
def fail(context: dict[str, Any]) -> None:
    raise RuntimeError("plain worker failed")
