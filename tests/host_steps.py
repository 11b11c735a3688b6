"""The saga steps both host apps (tests.host_plain, tests.host_django) register: the test
services' action and compensation, recorded in the same effects table."""

from __future__ import annotations

from typing import Any

from celery import Celery

from tests import services


def act(context: dict[str, Any]) -> Any:
    return services.act.run(context)


def undo(context: dict[str, Any]) -> Any:
    return services.undo.run(context)


def register_steps(app: Celery, prefix: str) -> None:
    """`PREFIX.act` and `PREFIX.undo` on `app`, as plain tasks of its own."""
    app.task(name=f"{prefix}.act")(act)
    app.task(name=f"{prefix}.undo")(undo)
