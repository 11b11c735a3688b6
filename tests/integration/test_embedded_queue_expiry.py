"""The embedded broker expires queues as RabbitMQ does: a queue declared with `x-expires` (Celery's
event and pidbox queues) that nobody polls any more is unbound and its messages deleted, so a
stopped event consumer (Flower, `celery events`) no longer leaves every task event to pile up."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue
from kombu.messaging import Producer

from sagaflow.config import Settings, celery_settings, ensure_home
from sagaflow.messaging import transport

EVENTS = Exchange("test-events", type="topic", durable=False)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[dict[str, object]]:
    settings = Settings(home=tmp_path, broker_url="filesystem://")
    ensure_home(settings)
    options = celery_settings(settings)["broker_transport_options"]
    yield {"transport": transport.Transport, "transport_options": options}


def queued_files(options: dict[str, object], queue: str) -> list[str]:
    folder = str(options["data_folder_in"])
    return [f for f in os.listdir(folder) if f.endswith(f".{queue}.msg")]


def bound_queues(conn: Connection, exchange: str) -> set[str]:
    return {b.queue for b in conn.default_channel.get_table(exchange)}


def age_mark(options: dict[str, object], queue: str, seconds: float) -> None:
    """As if the queue's last consumer had polled it `seconds` ago."""
    mark = Path(str(options["control_folder"])) / f"{transport.EXPIRY_MARK}{queue}"
    then = time.time() - seconds
    os.utime(mark, (then, then))


def publish(conn: Connection, routing_key: str, n: int = 1) -> None:
    producer = Producer(conn.default_channel, exchange=EVENTS, serializer="json")
    for i in range(n):
        producer.publish({"n": i}, routing_key=routing_key)


def test_an_abandoned_expiring_queue_is_unbound_and_emptied(broker: dict[str, object]) -> None:
    options = broker["transport_options"]
    assert isinstance(options, dict)
    expiring = Queue("celeryev.gone", EVENTS, routing_key="task.#", expires=60, auto_delete=True)
    lasting = Queue("stays", EVENTS, routing_key="task.#")  # no expiry: kept forever
    with Connection("filesystem://", **broker) as consumer:
        expiring(consumer.default_channel).declare()
        lasting(consumer.default_channel).declare()
    with Connection("filesystem://", **broker) as producer_conn:
        publish(producer_conn, "task.sent", 3)
        assert len(queued_files(options, "celeryev.gone")) == 3  # bound: it receives while alive
        age_mark(options, "celeryev.gone", transport.MIN_QUEUE_EXPIRY + 1)
        publish(producer_conn, "task.started", 2)
        assert queued_files(options, "celeryev.gone") == [], "the abandoned queue kept its messages"
        assert bound_queues(producer_conn, "test-events") == {"stays"}
        assert len(queued_files(options, "stays")) == 5  # a queue without expiry is untouched


def test_an_event_queue_polled_within_its_expiry_is_kept(broker: dict[str, object]) -> None:
    options = broker["transport_options"]
    assert isinstance(options, dict)
    # Declared with 10 s: a consumer busy that long must keep its queue (expiry at least 60 s).
    queue = Queue("celeryev.busy", EVENTS, routing_key="task.#", expires=10)
    with Connection("filesystem://", **broker) as consumer:
        queue(consumer.default_channel).declare()
        age_mark(options, "celeryev.busy", 30)
        with Connection("filesystem://", **broker) as producer_conn:
            publish(producer_conn, "task.sent")
            assert bound_queues(producer_conn, "test-events") == {"celeryev.busy"}
            assert len(queued_files(options, "celeryev.busy")) == 1


def test_only_event_queues_expire(broker: dict[str, object]) -> None:
    """A worker polls its pidbox and task queues only while its prefetch has room: declared
    with an expiry or not, they are never pruned here (RabbitMQ keeps a consumed queue)."""
    options = broker["transport_options"]
    assert isinstance(options, dict)
    for name in ("w1@host.celery.pidbox", "orders"):
        queue = Queue(name, EVENTS, routing_key="task.#", expires=10)
        with Connection("filesystem://", **broker) as consumer:
            queue(consumer.default_channel).declare()
    marks = Path(str(options["control_folder"])).glob(f"{transport.EXPIRY_MARK}*")
    assert list(marks) == []  # nothing to expire them by
    with Connection("filesystem://", **broker) as producer_conn:
        publish(producer_conn, "task.sent")
        assert bound_queues(producer_conn, "test-events") == {"w1@host.celery.pidbox", "orders"}


def test_a_consumer_that_comes_back_is_bound_again(broker: dict[str, object]) -> None:
    options = broker["transport_options"]
    assert isinstance(options, dict)
    queue = Queue("celeryev.back", EVENTS, routing_key="task.#", expires=60)
    with (
        Connection("filesystem://", **broker) as consumer,
        Connection("filesystem://", **broker) as producer_conn,
    ):
        bound = queue(consumer.default_channel)
        bound.declare()
        age_mark(options, "celeryev.back", transport.MIN_QUEUE_EXPIRY + 1)
        publish(producer_conn, "task.sent")
        assert bound_queues(producer_conn, "test-events") == set()
        # The same consumer polls again (once its last mark is a second old): it binds itself
        # again and the events published after that reach it.
        deadline = time.monotonic() + 30
        received = None
        while received is None:
            assert time.monotonic() < deadline, "the returning consumer was never bound again"
            publish(producer_conn, "task.succeeded")
            received = bound.get(no_ack=True)
            if received is None:
                time.sleep(0.05)  # poll interval, within the deadline
        assert bound_queues(producer_conn, "test-events") == {"celeryev.back"}
