"""Faults the engine must survive with real processes: a dead worker, an unreachable store,
and a broker folder shared by racing producers and consumers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from sagaflow import SagaState
from sagaflow.client.saga_client import SagaClient
from sagaflow.config import Settings, celery_settings, ensure_home
from sagaflow.devstack.processes import WorkerGroup, WorkerSpec
from sagaflow.store.factory import open_store
from tests.conftest import (
    REDIS_URL,
    ROOT,
    Stack,
    create_postgres_database,
    drop_postgres_database,
    poll,
    require_redis,
    service_env,
)


# Redis only: the embedded filesystem broker is at-most-once on a crash (documented).
@pytest.mark.parametrize("stack", ["redis-postgres"], indirect=True)
def test_service_worker_killed_mid_step_loses_nothing(stack: Stack) -> None:
    saga_id = stack.start("trip", {"crash_once": "b2"})
    saga = stack.wait_one(saga_id, timeout=90)
    assert saga.state is SagaState.COMPLETED
    # b2's first run died with its process; the message came back and ran again.
    assert stack.executions(saga_id) == [
        ("a1", "action"),
        ("b2", "action"),
        ("b2", "action"),
        ("a3", "action"),
        ("b4", "action"),
    ]
    assert all(s.attempts == 1 for s in saga.steps)  # a redelivery, not a new dispatch


@pytest.mark.parametrize("stack", ["redis-postgres"], indirect=True)
def test_saga_events_reach_a_queue_bound_to_the_exchange(stack: Stack) -> None:
    from kombu import Connection, Exchange, Queue

    exchange = Exchange(stack.settings.events_exchange, type="topic", durable=True)
    queue = Queue("test-saga-events", exchange=exchange, routing_key="trip.*")
    with Connection(stack.settings.broker_url) as conn:
        bound = queue(conn.default_channel)
        bound.declare()
        bound.purge()
        completed = stack.wait_one(stack.start("trip", {}))
        failed = stack.wait_one(stack.start("trip", {"fail_at": ["a1"]}))
        received: dict[str, dict[str, object]] = {}

        def drain() -> bool:
            message = bound.get(no_ack=True)
            while message is not None:
                payload = message.decode()
                received[payload["saga_id"]] = {
                    "routing_key": message.delivery_info["routing_key"],
                    **payload,
                }
                message = bound.get(no_ack=True)
            return completed.saga_id in received and failed.saga_id in received

        poll(drain, 30, lambda: f"events received so far: {sorted(received)}")
        bound.delete()
    assert received[completed.saga_id]["event"] == "TripCompleted"
    assert received[completed.saga_id]["routing_key"] == "trip.completed"
    assert received[completed.saga_id]["state"] == "completed"
    assert received[failed.saga_id]["event"] == "TripFailed"
    assert received[failed.saga_id]["error"] == {
        "type": "StepRefused",
        "qualified_type": "tests.services.StepRefused",
        "message": "step a1 refused as asked",
        "task_id": failed.steps[0].task_id,
        "traceback": failed.error.traceback if failed.error else None,
    }


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_orchestrator_retries_until_the_store_is_reachable(backend: str, tmp_path: Path) -> None:
    """A start taken while the store is down is retried, not dropped, and completes later."""
    home = tmp_path / "home"
    if backend == "postgres":
        require_redis()
        # A database that does not exist yet: every connection attempt fails.
        real_url = create_postgres_database("sagaflow_later")
        drop_postgres_database(real_url)
        database_url, broker_url = real_url, REDIS_URL.rsplit("/", 1)[0] + "/14"
        import redis

        redis.Redis.from_url(broker_url).flushdb()
    else:
        database_url = f"sqlite:///{tmp_path / 'not-yet' / 'sagaflow.db'}"
        broker_url = "filesystem://"
    settings = Settings(
        home=home, broker_url=broker_url, database_url=database_url, definitions=("tests.sagas",)
    )
    ensure_home(settings)
    env = service_env(settings, f"sqlite:///{tmp_path / 'effects.db'}")
    client = SagaClient(settings)
    with WorkerGroup(env, home / "logs", cwd=ROOT) as group:
        orchestrator = group.start(WorkerSpec("orchestrator", "sagaflow.worker", [settings.queue]))
        group.start(WorkerSpec("svc", "tests.services", ["svc_a", "svc_b"]))
        group.wait_ready(client.app)
        saga_id = client.start("dynamic", {"n": 2})
        poll(
            lambda: "Retry in" in orchestrator.log_path.read_text(errors="replace"),
            60,
            lambda: "the orchestrator never retried the start:\n" + orchestrator.log_tail(),
        )
        # The database comes back (created and migrated): the retried start goes through.
        if backend == "postgres":
            admin = sa.create_engine(
                sa.engine.make_url(database_url).set(database="postgres"),
                isolation_level="AUTOCOMMIT",
            )
            with admin.connect() as conn:
                conn.execute(
                    sa.text(f'CREATE DATABASE "{sa.engine.make_url(database_url).database}"')
                )
            admin.dispose()
        else:
            (tmp_path / "not-yet").mkdir()
        store = open_store(database_url)
        store.upgrade()
        try:
            saga = SagaClient(settings, store=store).wait(saga_id, timeout=90)
            assert saga.state is SagaState.COMPLETED
            assert "saga store" in orchestrator.log_path.read_text(errors="replace")
        finally:
            group.stop()
            store.dispose()
            if backend == "postgres":
                drop_postgres_database(database_url)


def test_filesystem_broker_delivers_each_message_once_under_racing_processes(
    tmp_path: Path,
) -> None:
    """Producers and consumers racing on one broker folder: no message lost, none doubled,
    no consumer crashes on a half-written file."""
    from kombu import Connection, Exchange, Queue

    from sagaflow.messaging import transport

    settings = Settings(home=tmp_path, broker_url="filesystem://")
    ensure_home(settings)
    options = celery_settings(settings)["broker_transport_options"]
    own = {"transport": transport.Transport, "transport_options": options}  # not kombu's own
    queue = Queue("race", Exchange("race", type="direct"), routing_key="race")
    total, producers, consumers = 400, 4, 4
    received: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    done = threading.Event()

    def produce(start: int) -> None:
        try:
            with Connection("filesystem://", **own) as conn:
                producer = conn.Producer(serializer="json")
                for n in range(start, total, producers):
                    producer.publish(
                        {"n": n}, exchange=queue.exchange, routing_key="race", declare=[queue]
                    )
        except BaseException as exc:
            errors.append(exc)

    def consume() -> None:
        try:
            with Connection("filesystem://", **own) as conn:
                simple = conn.SimpleQueue(queue)
                while not done.is_set():
                    try:
                        message = simple.get(timeout=0.05)
                    except simple.Empty:
                        continue
                    with lock:
                        received.append(message.payload["n"])
                    message.ack()
        except BaseException as exc:  # a crash is the failure this test looks for
            errors.append(exc)

    threads = [threading.Thread(target=consume) for _ in range(consumers)]
    threads += [threading.Thread(target=produce, args=(i,)) for i in range(producers)]
    for thread in threads:
        thread.start()
    try:
        poll(
            lambda: len(received) >= total or errors,
            60,
            lambda: f"{len(received)} of {total} messages received",
        )
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=30)
    assert errors == []
    assert sorted(received) == list(range(total))


def test_filesystem_broker_keeps_every_binding_when_workers_start_together(
    tmp_path: Path,
) -> None:
    """Workers starting at once bind queues to shared exchanges (pidbox, events): no binding may
    be lost and nobody may read a half-written exchange table."""
    from kombu import Connection, Exchange, Queue

    from sagaflow.messaging import transport

    settings = Settings(home=tmp_path, broker_url="filesystem://")
    ensure_home(settings)
    options = celery_settings(settings)["broker_transport_options"]
    own = {"transport": transport.Transport, "transport_options": options}  # not kombu's own
    exchange = Exchange("shared-fanout", type="fanout")
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def bind(worker: int) -> None:
        try:
            with Connection("filesystem://", **own) as conn:
                channel = conn.default_channel
                start.wait()
                for n in range(10):
                    Queue(f"q-{worker}-{n}", exchange)(channel).declare()
                    channel.get_table("shared-fanout")  # a reader racing the writers
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=bind, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    with Connection("filesystem://", **own) as conn:
        table = conn.default_channel.get_table("shared-fanout")
    assert sorted(q.queue for q in table) == sorted(
        f"q-{w}-{n}" for w in range(8) for n in range(10)
    )
