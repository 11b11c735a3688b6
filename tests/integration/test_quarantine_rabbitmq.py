"""Poison messages on RabbitMQ: the same screen, the same quarantine, on Celery's most used
production broker (a virtual host of this run's own)."""

from __future__ import annotations

import pytest

from sagaflow import SagaState
from sagaflow.core.protocol import OPERATOR_TASK, START_TASK
from sagaflow.core.quarantine import QuarantineReason
from tests.conftest import Stack
from tests.integration.test_quarantine import (
    check_every_kind_of_poison,
    send_task,
    wait_quarantined,
)


@pytest.mark.parametrize("queue_kind", ["orchestrator", "service"])
def test_every_kind_of_poison_is_quarantined_on_rabbitmq(
    rabbitmq_stack: Stack, queue_kind: str
) -> None:
    check_every_kind_of_poison(rabbitmq_stack, queue_kind)


def test_orchestrator_tasks_quarantine_bad_arguments_on_rabbitmq(rabbitmq_stack: Stack) -> None:
    stack = rabbitmq_stack
    ids = [
        send_task(stack, START_TASK, saga_type="trip", data={}, colour="red"),
        send_task(stack, OPERATOR_TASK, action="cancel", saga_id=["a"]),
    ]
    for task_id in ids:
        assert wait_quarantined(stack, task_id).reason is QuarantineReason.BAD_ARGUMENTS
    saga_id = stack.start("trip", {})
    assert stack.wait_one(saga_id).state is SagaState.COMPLETED
