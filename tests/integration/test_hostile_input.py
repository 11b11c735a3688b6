"""Hostile input: refused at the client with the reason, recorded as rejected when a raw producer
sends it to the orchestrator, and never able to wedge the orchestrator or corrupt the store.
Runs on Redis + PostgreSQL (whose JSONB refuses NUL and lone surrogates) and embedded."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from sagaflow import InvalidSagaInput, SagaState
from sagaflow.core.machine import SagaRecord
from sagaflow.core.protocol import MAX_INPUT_DEPTH, START_TASK
from sagaflow.core.vocabulary import HistoryEvent
from tests.conftest import Stack, poll


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"x": value}
    return value


LONE_SURROGATE = "\ud800"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (nested(MAX_INPUT_DEPTH + 1), f"nested more than {MAX_INPUT_DEPTH} levels deep"),
        (nested(50_000), f"nested more than {MAX_INPUT_DEPTH} levels deep"),
        ({"name": "a\x00b"}, "NUL character"),
        ({"a\x00": 1}, "NUL character"),
        ({"name": f"x{LONE_SURROGATE}"}, "lone surrogate"),
        ({"list": [[f"{LONE_SURROGATE}"]]}, "lone surrogate"),
    ],
    ids=["deep", "very-deep", "nul-value", "nul-key", "surrogate", "surrogate-in-list"],
)
def test_the_client_refuses_unstorable_input_before_sending(
    stack: Stack, data: dict[str, Any], reason: str
) -> None:
    saga_id = f"hostile-{uuid.uuid4().hex[:12]}"
    with pytest.raises(InvalidSagaInput, match=reason):
        stack.client.start("trip", data, saga_id=saga_id)
    assert stack.store.load(saga_id) is None


@pytest.mark.parametrize("saga_id", ["has space", "nul\x00id", "ü-not-plain", "-dash", "x" * 65])
def test_the_client_refuses_saga_ids_that_are_not_plain(stack: Stack, saga_id: str) -> None:
    with pytest.raises(InvalidSagaInput, match=re.escape("letters, digits and _.:@-")):
        stack.client.start("trip", {}, saga_id=saga_id)


def raw_start(stack: Stack, saga_id: Any, saga_type: Any, data: Any) -> None:
    """A start sent by a producer that does not use SagaClient (so nothing checked it)."""
    stack.client.app.send_task(
        START_TASK,
        kwargs={"saga_id": saga_id, "saga_type": saga_type, "data": data},
        queue=stack.settings.queue,
    )


@pytest.mark.parametrize(
    ("data", "reason", "stored"),
    [
        (
            {"name": f"a{LONE_SURROGATE}b"},
            "lone surrogate",
            {"name": "a?b"},
        ),
        ({"note": "x\x00y", "k\x00": 1}, "NUL character", {"note": "xy", "k": 1}),
        (nested(MAX_INPUT_DEPTH + 5), f"nested more than {MAX_INPUT_DEPTH} levels", None),
    ],
    ids=["surrogate", "nul", "deep"],
)
def test_unstorable_input_from_a_raw_producer_is_recorded_as_rejected(
    stack: Stack, data: Any, reason: str, stored: Any
) -> None:
    saga_id = f"raw-{uuid.uuid4().hex[:12]}"
    raw_start(stack, saga_id, "trip", data)
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.REJECTED
    assert saga.error is not None and saga.error.type == "InvalidSagaInput"
    assert reason in saga.error.message
    if stored is not None:
        assert saga.data == stored  # cleaned so that the rejection itself could be stored
    assert [h.event for h in stack.store.history(saga_id)] == [HistoryEvent.SAGA_REJECTED]


def rejected_with_marker(stack: Stack, marker: str) -> SagaRecord | None:
    for saga in stack.store.list_sagas(state=SagaState.REJECTED, limit=200):
        data = saga.data if isinstance(saga.data, dict) else {}
        inner = data.get("input") if isinstance(data.get("input"), dict) else data
        if isinstance(inner, dict) and inner.get("marker") == marker:
            return saga
    return None


@pytest.mark.parametrize("bad_id", ["nul\x00id", f"sur{LONE_SURROGATE}", "with space", 42, ""])
def test_a_raw_start_with_a_bad_saga_id_is_recorded_under_a_new_id(
    stack: Stack, bad_id: Any
) -> None:
    marker = uuid.uuid4().hex
    raw_start(stack, bad_id, "trip", {"marker": marker})
    saga = poll(
        lambda: rejected_with_marker(stack, marker),
        30,
        lambda: f"no rejected saga recorded for the start with id {bad_id!r}{stack.logs_hint()}",
    )
    assert saga.error is not None and "invalid saga id" in saga.error.message
    uuid.UUID(saga.saga_id)  # a fresh, plain id


def test_a_saga_type_with_unstorable_text_is_rejected_cleanly(stack: Stack) -> None:
    saga_id = f"raw-{uuid.uuid4().hex[:12]}"
    raw_start(stack, saga_id, f"tr\x00ip{LONE_SURROGATE}", {})
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.REJECTED
    assert saga.error is not None and saga.error.type == "UnknownSagaType"
    assert saga.saga_type == "trip?"


def publish_raw(stack: Stack, body: bytes, task_id: str) -> None:
    """Bytes that claim to be a JSON sagaflow.start message, straight onto the queue."""
    app = stack.client.app
    with app.producer_or_acquire() as producer:
        producer.publish(
            body,
            exchange="",
            routing_key=stack.settings.queue,
            content_type="application/json",
            content_encoding="utf-8",
            headers={"lang": "py", "task": START_TASK, "id": task_id, "root_id": task_id},
            declare=[app.amqp.queues[stack.settings.queue]],
        )


def test_undecodable_messages_are_dropped_and_the_orchestrator_carries_on(stack: Stack) -> None:
    publish_raw(stack, b'[[], {"saga_id": "\xff\xfe bad utf-8"}, {}]', "not-utf8")
    publish_raw(stack, b"[" * 200_000, "deeper-than-any-decoder")
    publish_raw(stack, b'{"truncated": ', "not-json")
    # Sagas sent after them still run: nothing wedged the orchestrator or its queue.
    barrier = [stack.start("trip", {}) for _ in range(3)]
    assert [s.state for s in stack.wait(barrier)] == [SagaState.COMPLETED] * 3
    if stack.redis:
        import redis

        queued = redis.Redis.from_url(stack.settings.broker_url).llen(stack.settings.queue)
        assert queued == 0, f"{queued} messages left on the orchestrator queue"
