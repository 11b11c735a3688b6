"""Poison messages: whatever lands on a sagaflow worker's queue, the worker quarantines what
cannot be a task of it, acknowledges it and carries on; sagas running beside it finish.

Runs against real worker processes on Redis + PostgreSQL and on the embedded broker and SQLite
(the `stack` fixture), and on RabbitMQ (test_quarantine_rabbitmq.py).
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from sagaflow import SagaState
from sagaflow.core.protocol import (
    OPERATOR_TASK,
    RECOVER_TASK,
    START_TASK,
    STEP_FAILED_TASK,
    STEP_SUCCEEDED_TASK,
)
from sagaflow.core.quarantine import QuarantinedMessage, QuarantineReason
from sagaflow.core.vocabulary import HistoryEvent
from sagaflow.devstack.processes import WorkerProcess
from sagaflow.ops.dashboard import create_dashboard
from sagaflow.store.quarantine import QuarantineStore
from tests.conftest import Stack, poll


@dataclass(frozen=True)
class Poison:
    """A message as raw bytes and headers, and the reason it must be quarantined for."""

    name: str
    body: bytes
    reason: QuarantineReason
    task: str = START_TASK
    content_type: str = "application/json"
    headers: dict[str, Any] | None = None


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


EMBED: dict[str, Any] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

# Kinds of message that cannot be a task at all: the envelope is wrong.
ENVELOPE_POISONS = [
    Poison("string-body", _json("just a string"), QuarantineReason.NOT_A_TASK),
    Poison("object-body", _json({"a": 1}), QuarantineReason.NOT_A_TASK),
    Poison("pair-body", _json([[], {}]), QuarantineReason.NOT_A_TASK),
    Poison("args-not-list", _json([{"x": 1}, {}, EMBED]), QuarantineReason.NOT_A_TASK),
    Poison("bad-errbacks", _json([[], {}, {"errbacks": "x"}]), QuarantineReason.NOT_A_TASK),
    Poison(
        "bad-eta",
        _json([[], {}, EMBED]),
        QuarantineReason.NOT_A_TASK,
        headers={"eta": "not a time"},
    ),
    Poison(
        "bad-timelimit",
        _json([[], {}, EMBED]),
        QuarantineReason.NOT_A_TASK,
        headers={"timelimit": "soon"},
    ),
    Poison("not-json", b'{"truncated": ', QuarantineReason.UNDECODABLE),
    Poison("not-utf8", b'[[], {"x": "\xff\xfe"}, {}]', QuarantineReason.UNDECODABLE),
    Poison("too-deep", b"[" * 200_000, QuarantineReason.UNDECODABLE),
    Poison(
        "pickle",
        b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00]\x94.",
        QuarantineReason.UNDECODABLE,
        content_type="application/x-python-serialize",
    ),
    Poison(
        "unknown-task",
        _json([[], {}, EMBED]),
        QuarantineReason.UNKNOWN_TASK,
        task="nobody.knows_this",
    ),
]


def publish(stack: Stack, queue: str, poison: Poison) -> str:
    """`poison` straight onto `queue`, as a producer that is not Celery could put it there."""
    task_id = f"poison-{poison.name}-{uuid.uuid4().hex[:8]}"
    headers: dict[str, Any] = {"lang": "py", "task": poison.task, "id": task_id}
    headers.update(poison.headers or {})
    app = stack.client.app
    with app.producer_or_acquire() as producer:
        producer.publish(
            poison.body,
            exchange="",
            routing_key=queue,
            content_type=poison.content_type,
            content_encoding="utf-8" if poison.content_type.endswith("json") else "binary",
            headers=headers,
            declare=[app.amqp.queues[queue]] if queue in app.amqp.queues else [],
        )
    return task_id


def quarantined(stack: Stack, task_id: str) -> QuarantinedMessage | None:
    for record in QuarantineStore(stack.store).newest(limit=1000):
        if record.task_id == task_id:
            return record
    return None


def wait_quarantined(stack: Stack, task_id: str, timeout: float = 60) -> QuarantinedMessage:
    record: QuarantinedMessage = poll(
        lambda: quarantined(stack, task_id),
        timeout,
        lambda: f"message {task_id} never reached the quarantine{stack.logs_hint()}",
    )
    return record


def workers_named(stack: Stack, *names: str) -> list[WorkerProcess]:
    return [w for w in stack.group.workers if w.spec.name in names]


@pytest.mark.parametrize("queue_kind", ["orchestrator", "service"])
def test_every_kind_of_poison_is_quarantined_and_the_workers_carry_on(
    stack: Stack, queue_kind: str
) -> None:
    check_every_kind_of_poison(stack, queue_kind)


def check_every_kind_of_poison(stack: Stack, queue_kind: str) -> None:
    queue = stack.settings.queue if queue_kind == "orchestrator" else "svc_a"
    consumers = workers_named(stack, "orchestrator" if queue_kind == "orchestrator" else "svc_a")
    # Sagas in flight while the poison arrives: they must finish as if nothing happened.
    before = [stack.start("trip", {}) for _ in range(3)]
    sent = {poison.name: (poison, publish(stack, queue, poison)) for poison in ENVELOPE_POISONS}
    after = [stack.start("trip", {}) for _ in range(3)]
    assert [s.state for s in stack.wait(before + after)] == [SagaState.COMPLETED] * 6
    for name, (poison, task_id) in sent.items():
        record = wait_quarantined(stack, task_id)
        assert record.reason is poison.reason, f"{name}: {record.reason} ({record.detail})"
        assert record.queue == queue
        assert record.task == poison.task
        if not record.truncated:
            assert record.body == poison.body, f"{name}: the record must hold the bytes sent"
        warnings = [
            line
            for worker in stack.group.workers
            for line in worker.log_path.read_text(errors="replace").splitlines()
            if task_id in line and "WARNING" in line
        ]
        assert len(warnings) == 1, f"{name}: logged {len(warnings)} times: {warnings}"
    for worker in consumers:
        assert worker.alive, f"{worker.spec.name} exited:\n{worker.log_tail()}"
    left = stack.queued(queue)
    assert left in (0, None), f"{left} messages left on {queue}: the poison was not acknowledged"


def test_a_message_over_the_size_limit_is_refused_before_it_is_decoded(stack: Stack) -> None:
    limit = stack.settings.max_message_bytes
    body = _json([[], {"saga_id": "big", "data": {"blob": "x" * (limit + 10)}}, EMBED])
    task_id = publish(
        stack, stack.settings.queue, Poison("oversize", body, QuarantineReason.OVERSIZE)
    )
    record = wait_quarantined(stack, task_id)
    assert record.reason is QuarantineReason.OVERSIZE
    assert record.truncated and not record.replayable
    assert record.body_size == len(body)
    assert record.body == body[: len(record.body)] and len(record.body) < len(body)
    assert stack.store.load("big") is None  # never decoded, so never started
    saga_id = stack.start("trip", {})
    assert stack.wait_one(saga_id).state is SagaState.COMPLETED


def send_task(stack: Stack, name: str, *args: Any, **kwargs: Any) -> str:
    task_id = f"bad-{uuid.uuid4().hex[:12]}"
    stack.client.app.send_task(
        name, args=list(args), kwargs=kwargs, queue=stack.settings.queue, task_id=task_id
    )
    return task_id


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "detail"),
    [
        (START_TASK, [], {"saga_type": "trip", "data": {}, "colour": "red"}, "unexpected keyword"),
        (START_TASK, ["not plain", "trip", {}, None, 5], {}, "at most 4 positional"),
        (OPERATOR_TASK, [], {"action": "cancel", "saga_id": ["a"]}, "not a saga id"),
        (OPERATOR_TASK, [], {"action": "explode", "saga_id": "a"}, "not one of"),
        (RECOVER_TASK, [], {"stalled_for": 0}, "takes no arguments"),
        (
            STEP_SUCCEEDED_TASK,
            [None],
            {"saga_id": "a\x00b", "position": 0, "phase": "action", "attempt": 1},
            "not a saga id",
        ),
        (
            STEP_SUCCEEDED_TASK,
            [None],
            {"saga_id": "abc", "position": "0", "phase": "action", "attempt": 1},
            "position",
        ),
        (
            STEP_FAILED_TASK,
            [],
            {"saga_id": "abc", "position": 0, "phase": "undo", "attempt": 1, "error": {}},
            "phase",
        ),
        (
            STEP_FAILED_TASK,
            [],
            {"saga_id": "abc", "position": 0, "phase": "action", "attempt": 1, "error": "boom"},
            "not an object",
        ),
    ],
    ids=[
        "start-extra-kw",
        "start-five-args",
        "operator-list-id",
        "operator-action",
        "recover-kw",
        "outcome-nul-id",
        "outcome-text-position",
        "failed-phase",
        "failed-error-text",
    ],
)
def test_orchestrator_tasks_quarantine_arguments_they_cannot_take(
    stack: Stack, name: str, args: list[Any], kwargs: dict[str, Any], detail: str
) -> None:
    log = stack.group.log_dir / "orchestrator.log"
    logged_before = log.stat().st_size
    task_id = send_task(stack, name, *args, **kwargs)
    record = wait_quarantined(stack, task_id)
    assert record.reason is QuarantineReason.BAD_ARGUMENTS
    assert detail in record.detail
    assert record.task == name
    body = json.loads(record.body)
    assert body[0] == args and body[1] == json.loads(json.dumps(kwargs))
    with log.open("rb") as logged:
        logged.seek(logged_before)
        assert b"Traceback" not in logged.read(), f"{name} logged a traceback"


def test_a_wrongly_shaped_start_naming_a_saga_id_records_a_rejected_saga(stack: Stack) -> None:
    saga_id = f"shape-{uuid.uuid4().hex[:12]}"
    send_task(stack, START_TASK, saga_id=saga_id, saga_type="trip", data={}, colour="red")
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.REJECTED
    assert saga.error is not None and saga.error.type == "InvalidSagaInput"
    assert "unexpected keyword argument 'colour'" in saga.error.message
    assert [h.event for h in stack.store.history(saga_id)] == [HistoryEvent.SAGA_REJECTED]


def test_a_poison_message_delivered_twice_is_one_record(stack: Stack) -> None:
    poison = Poison("twice", _json({"a": 1}), QuarantineReason.NOT_A_TASK)
    headers = {"lang": "py", "task": START_TASK, "id": f"twice-{uuid.uuid4().hex[:8]}"}
    app = stack.client.app
    for _ in range(2):
        with app.producer_or_acquire() as producer:
            producer.publish(
                poison.body,
                exchange="",
                routing_key=stack.settings.queue,
                content_type="application/json",
                content_encoding="utf-8",
                headers=headers,
            )
    record = wait_quarantined(stack, headers["id"])
    log = stack.group.log_dir / "orchestrator.log"
    poll(
        lambda: (
            f"message {headers['id']} already in the quarantine as {record.id}"
            in log.read_text(errors="replace")
        ),
        60,
        lambda: f"the second delivery of {headers['id']} was never handled{stack.logs_hint()}",
    )
    matching = [
        r for r in QuarantineStore(stack.store).newest(limit=1000) if r.task_id == headers["id"]
    ]
    assert len(matching) == 1


def quarantine_a_misrouted_start(stack: Stack, prefix: str) -> tuple[str, QuarantinedMessage]:
    """A start sent to a service queue by mistake (its worker has no such task), quarantined."""
    saga_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
    task_id = f"misrouted-{uuid.uuid4().hex[:8]}"
    stack.client.app.send_task(
        START_TASK,
        kwargs={"saga_id": saga_id, "saga_type": "trip", "data": {}},
        queue="svc_b",
        task_id=task_id,
    )
    return saga_id, wait_quarantined(stack, task_id)


def test_the_cli_lists_shows_replays_and_drops_quarantined_messages(stack: Stack) -> None:
    saga_id, record = quarantine_a_misrouted_start(stack, "misrouted")
    assert record.reason is QuarantineReason.UNKNOWN_TASK and record.queue == "svc_b"
    assert record.saga_id == saga_id

    listed = stack.cli("quarantine", "list", "--json", "--limit", "1000")
    assert listed.returncode == 0, listed.stderr
    assert record.id in [r["id"] for r in json.loads(listed.stdout)]
    table = stack.cli("quarantine", "list", "--reason", "unknown_task", "--limit", "1000")
    assert table.returncode == 0 and record.id[:12] in table.stdout, table.stdout + table.stderr

    shown = stack.cli("quarantine", "show", record.id[:10])
    assert shown.returncode == 0, shown.stderr
    assert "unknown_task" in shown.stdout and saga_id in shown.stdout
    shown_json = json.loads(stack.cli("quarantine", "show", record.id, "--json").stdout)
    assert json.loads(shown_json["body_text"])[1]["saga_id"] == saga_id

    missing = stack.cli("quarantine", "show", "0" * 32)
    assert missing.returncode == 3 and "no quarantined message" in missing.stderr
    assert "Traceback" not in missing.stderr

    # Replayed onto the orchestrator's queue, where it belongs, it starts its saga.
    replayed = stack.cli("quarantine", "replay", record.id, "--queue", stack.settings.queue)
    assert replayed.returncode == 0, replayed.stderr
    assert stack.wait_one(saga_id).state is SagaState.COMPLETED
    assert QuarantineStore(stack.store).get(record.id) is None

    # Dropped, it is gone; replayed as it was, a message still wrong is quarantined anew.
    again = wait_quarantined(stack, publish(stack, "svc_a", ENVELOPE_POISONS[0]))
    replay_again = stack.cli("quarantine", "replay", again.id)
    assert replay_again.returncode == 0, replay_again.stderr

    def requarantined() -> QuarantinedMessage | None:
        for candidate in QuarantineStore(stack.store).newest(limit=1000):
            if candidate.task_id == again.task_id and candidate.id != again.id:
                return candidate
        return None

    anew = poll(requarantined, 60, lambda: "the replayed poison was never quarantined again")
    assert anew.headers.get("sagaflow_replayed_from") == again.id
    dropped = stack.cli("quarantine", "drop", anew.id)
    assert dropped.returncode == 0, dropped.stderr
    assert QuarantineStore(stack.store).get(anew.id) is None
    usage = stack.cli("quarantine", "drop")
    assert usage.returncode == 2 and "give message ids or --all" in usage.stderr


def test_an_oversized_message_cannot_be_replayed(stack: Stack) -> None:
    body = b"[" + b" " * (stack.settings.max_message_bytes + 1) + b"]"
    task_id = publish(stack, "svc_a", Poison("huge", body, QuarantineReason.OVERSIZE))
    record = wait_quarantined(stack, task_id)
    refused = stack.cli("quarantine", "replay", record.id)
    assert refused.returncode == 1 and "cannot be replayed" in refused.stderr
    assert QuarantineStore(stack.store).get(record.id) is not None


def test_the_dashboard_shows_counts_drops_and_replays_quarantined_messages(stack: Stack) -> None:
    poison = Poison("dashboard", _json({"shown": "in the dashboard"}), QuarantineReason.NOT_A_TASK)
    record = wait_quarantined(stack, publish(stack, "svc_a", poison))
    web = create_dashboard(stack.settings, client=stack.client).test_client()

    listed = web.get("/api/quarantine?reason=not_a_task&limit=1000")
    assert listed.status_code == 200
    assert record.id in [r["id"] for r in listed.json]
    shown = web.get(f"/api/quarantine/{record.id}")
    assert shown.status_code == 200 and shown.json["body_text"] == poison.body.decode()
    assert shown.json["queue"] == "svc_a" and shown.json["replayable"] is True
    page = web.get("/quarantine")
    assert page.status_code == 200 and record.id[:12] in page.text
    detail = web.get(f"/quarantine/{record.id}")
    assert detail.status_code == 200 and "in the dashboard" in detail.text
    assert "not Celery&#39;s [args, kwargs, embed]" in detail.text
    metrics = web.get("/metrics").text
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith('sagaflow_quarantined_messages{reason="not_a_task"}')
    ]
    assert counted and float(counted[0].split()[-1]) >= 1
    for bad in ("/api/quarantine/no%00pe", "/api/quarantine/" + "a" * 65, "/quarantine/x-y"):
        answer = web.get(bad)
        assert answer.status_code == 404, bad
    assert web.get("/api/quarantine?reason=bogus").status_code == 400
    refused = web.post(f"/api/quarantine/{record.id}/drop", json={})
    assert refused.status_code == 403 and refused.json["error"]["type"] == "Forbidden"

    token = base64.b64encode(b"op:secret").decode()
    operator = create_dashboard(
        stack.settings, client=stack.client, auth=("op", "secret"), actions=True
    ).test_client()
    headers = {"Authorization": f"Basic {token}"}
    dropped = operator.post(f"/api/quarantine/{record.id}/drop", json={}, headers=headers)
    assert dropped.status_code == 200 and dropped.json["result"] == "dropped"
    assert QuarantineStore(stack.store).get(record.id) is None
    gone = operator.get(f"/api/quarantine/{record.id}", headers=headers)
    assert gone.status_code == 404 and gone.json["error"]["type"] == "QuarantinedMessageNotFound"

    # A misrouted start, replayed from the dashboard onto the orchestrator's queue, runs.
    saga_id, misrouted = quarantine_a_misrouted_start(stack, "from-dashboard")
    replayed = operator.post(
        f"/api/quarantine/{misrouted.id}/replay",
        json={"queue": stack.settings.queue},
        headers=headers,
    )
    assert replayed.status_code == 202, replayed.json
    assert stack.wait_one(saga_id).state is SagaState.COMPLETED
