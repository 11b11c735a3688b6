"""A worker killed whole while it holds a step: the orchestrator notices its silence in seconds
and sends the step again, where Redis would keep the message unacknowledged for an hour and the
embedded broker has already deleted it. A live worker busy with a long step is left alone."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from datetime import datetime, timezone
from typing import Any

from sagaflow import SagaState
from sagaflow.core.definitions import Phase
from sagaflow.core.records import task_id_for
from sagaflow.core.vocabulary import HistoryEvent
from sagaflow.devstack.processes import WorkerSpec
from sagaflow.messaging.liveness import BEACON_EVENT, BEACON_ROUTING_KEY
from tests.conftest import Stack, poll

ON_EVERY_BROKER = True  # its stack tests run on Redis, RabbitMQ and the embedded broker

LOST_AFTER = 10.0  # Settings.worker_lost_seconds on Redis and the embedded broker


def wait_for_beacon(stack: Stack, hostname: str, task_id: str, timeout: float = 60) -> None:
    """Until a beacon of `hostname` names `task_id`: the orchestrator's monitor has it too."""
    app = stack.client.app
    seen: list[dict[str, Any]] = []

    def on_beacon(event: dict[str, Any]) -> None:
        if str(event.get("hostname", "")).startswith(hostname) and task_id in (
            event.get("held") or []
        ):
            seen.append(event)

    deadline = time.monotonic() + timeout
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(
            conn, handlers={BEACON_EVENT: on_beacon}, routing_key=BEACON_ROUTING_KEY
        )
        consumers = receiver.get_consumers(conn.Consumer, conn.default_channel)
        with contextlib.ExitStack() as entered:
            for consumer in consumers:
                entered.enter_context(consumer)
            while not seen:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"no beacon of {hostname} named {task_id} in {timeout:g}s"
                        + stack.logs_hint()
                    )
                with contextlib.suppress(TimeoutError, socket.timeout):
                    conn.drain_events(timeout=1.0)


def test_a_step_held_by_a_killed_worker_is_sent_again_within_seconds(stack: Stack) -> None:
    mortal = stack.start_worker(
        WorkerSpec("mortal", "tests.services", ["mortal"], pool="prefork", concurrency=1)
    )
    replacement = None
    try:
        saga_id = stack.start("mortal", {"slow_first_run": {"m2": 600}})
        held = task_id_for(saga_id, 1, Phase.ACTION, 1)
        poll(
            lambda: ("m2", "action") in stack.executions(saga_id),
            60,
            lambda: f"m2 of {saga_id} never started{stack.logs_hint()}",
        )
        wait_for_beacon(stack, "mortal@", held)
        killed_at = datetime.now(timezone.utc)
        os.killpg(mortal.process.pid, signal.SIGKILL)  # the main process and its pool
        mortal.process.wait(timeout=10)
        stack.group.stop_worker(mortal)
        replacement = stack.start_worker(
            WorkerSpec("mortal2", "tests.services", ["mortal"], pool="prefork", concurrency=1)
        )
        saga = stack.wait_one(saga_id, timeout=90)
        assert saga.state is SagaState.COMPLETED
        resent = [
            h
            for h in stack.store.history(saga_id)
            if h.event == HistoryEvent.STEP_REDRIVEN and (h.detail or {}).get("worker_lost")
        ]
        if stack.settings.broker_url.startswith("amqp"):
            # RabbitMQ gives a dead consumer's unacknowledged messages back at once: the same
            # attempt runs again on the replacement, and the beacon has nothing to re-drive
            # unless the replacement took longer to start than the beacon waits (a loaded
            # machine); then the re-drive's attempt is the one that counts.
            assert len(resent) <= 1, [h.event for h in stack.store.history(saga_id)]
            assert stack.executions(saga_id).count(("m2", "action")) >= 2
            assert saga.steps[1].attempts == 1 + len(resent)
            return
        assert len(resent) == 1, [h.event for h in stack.store.history(saga_id)]
        assert str(resent[0].detail["worker_lost"]).startswith("mortal@")
        noticed = (resent[0].at - killed_at).total_seconds()
        # The contract is 30 s; the beacon timeout is 10 s.
        assert LOST_AFTER - 1 <= noticed < 30, f"sent again {noticed:.1f}s after the kill"
        assert saga.steps[1].attempts == 2
        print(f"step sent again {noticed:.1f}s after its worker was killed")
    finally:
        if replacement is not None:
            stack.group.stop_worker(replacement)


def test_a_live_worker_busy_with_a_long_step_is_not_declared_lost(stack: Stack) -> None:
    worker = stack.start_worker(
        WorkerSpec("patient", "tests.services", ["mortal"], pool="solo", concurrency=1)
    )
    try:
        # Longer than the beacon timeout, on a solo pool whose loop the step blocks.
        saga_id = stack.start("mortal", {"slow_first_run": {"m2": LOST_AFTER + 5}})
        saga = stack.wait_one(saga_id, timeout=90)
        assert saga.state is SagaState.COMPLETED
        assert saga.steps[1].attempts == 1
        assert not [
            h for h in stack.store.history(saga_id) if h.event == HistoryEvent.STEP_REDRIVEN
        ]
        assert stack.executions(saga_id).count(("m2", "action")) == 1
    finally:
        stack.group.stop_worker(worker)
