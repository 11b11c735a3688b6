"""The chaos run's choice of broker and fault kinds (the run itself is tests/acceptance)."""

from __future__ import annotations

import random

import pytest

from benchmarks.chaos import FAULT_KINDS, ON_RABBITMQ, ON_REDIS, kinds_for, main, plan_faults
from benchmarks.chaos_cluster import RabbitBroker


def test_each_broker_has_its_own_faults_and_shares_the_process_ones() -> None:
    assert kinds_for(None) == ON_REDIS and kinds_for("amqp://guest:guest@h:5672") == ON_RABBITMQ
    assert not any(k.startswith("redis") or "outage" in k for k in ON_RABBITMQ)
    assert not any(k.startswith("rabbitmq") for k in ON_REDIS)
    assert {"service_worker", "orchestrator", "postgres_drop"} <= set(ON_REDIS) & set(ON_RABBITMQ)
    assert set(FAULT_KINDS) == set(ON_REDIS) | set(ON_RABBITMQ)
    # Every kind once before any repeats, on RabbitMQ as on Redis.
    plan = plan_faults(random.Random(1), len(ON_RABBITMQ), 100, ON_RABBITMQ)
    assert sorted(kind for _, kind in plan) == sorted(ON_RABBITMQ)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--broker", "redis://127.0.0.1:6379/0"], "takes an amqp:// URL"),
        (["--broker", "amqp://guest:guest@127.0.0.1:5672", "--kinds", "redis_flush"], "apply"),
        (["--kinds", "rabbitmq_restart"], "do not apply"),
    ],
)
def test_a_fault_kind_or_broker_that_does_not_fit_is_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_rabbitmq_run_gets_a_virtual_host_of_its_own() -> None:
    first = RabbitBroker("amqp://user:secret@rabbit.example:5673")
    second = RabbitBroker("amqp://user:secret@rabbit.example:5673/")
    assert first.url.startswith("amqp://user:secret@rabbit.example:5673/sagaflow-chaos-")
    assert first.vhost != second.vhost
    assert RabbitBroker("amqp://127.0.0.1").url.startswith("amqp://guest:guest@127.0.0.1:5672/")
