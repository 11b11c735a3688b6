"""Noticing, in seconds, a worker that died holding steps.

On Redis a worker killed whole leaves its unacknowledged messages in the broker until the
visibility timeout (an hour by default) passes, and the embedded broker deletes a message when
it is read: either way the step waits for the recovery sweep's stall timeout. So every worker
with sagaflow's service support sends a beacon every `BEACON_INTERVAL` seconds, from a thread of
its own (a solo pool busy with a long step still beats): its hostname, its process id and the
ids of the tasks it holds. The orchestrator's monitor listens; an incarnation silent for
`lost_after` seconds is dead, and the orchestrator is asked to send the steps it held again (a
new attempt: a late outcome of the old one is ignored).

RabbitMQ gives a dead consumer's messages back at once, so there the monitor is off by default.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

logger = logging.getLogger("sagaflow.messaging.liveness")

BEACON_EVENT = "sagaflow-worker-alive"
OFFLINE_EVENT = "sagaflow-worker-offline"
BEACON_ROUTING_KEY = "sagaflow.worker.#"
BEACON_INTERVAL = 2.0
# A task taken between beats is reported this soon (so a worker killed right after taking a
# step still names it), but beacons never go out more often than this under load.
BEACON_MIN_SPACING = 0.25
MAX_TASK_IDS = 2_000  # per beacon: a worker holding more is a worker with far too high a prefetch


def held_task_ids() -> list[str]:
    """Ids of the tasks this worker process has taken and not finished (reserved or running).

    Read from another thread while the consumer changes the set: retried on a concurrent change.
    """
    from celery.worker import state

    for _ in range(5):
        try:
            return [request.id for request in list(state.reserved_requests)][:MAX_TASK_IDS]
        except RuntimeError:  # set changed size during iteration
            continue
    return []


class Beacon:
    """The thread that tells the orchestrator this worker is alive and what it holds."""

    def __init__(self, app: Celery, hostname: str, interval: float = BEACON_INTERVAL) -> None:
        self.app = app
        self.hostname = hostname
        self.interval = interval
        self.pid = os.getpid()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Beat soon: the worker took a task."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sagaflow-beacon", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
            # A warm shutdown finished its tasks: nothing it held is lost.
            with contextlib.suppress(Exception):
                self._send(OFFLINE_EVENT, [])

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.app.connection_for_write() as conn:
                    dispatcher = self._dispatcher(conn)
                    while not self._stop.is_set():
                        self._wake.wait(self.interval)
                        self._wake.clear()
                        if self._stop.is_set():
                            return
                        self._beat(dispatcher, BEACON_EVENT, held_task_ids())
                        self._stop.wait(BEACON_MIN_SPACING)
            except Exception as exc:  # the broker is away: beat again once it is back
                logger.debug("beacon not sent: %s", exc)
                self._stop.wait(self.interval)

    def _send(self, event: str, task_ids: list[str]) -> None:
        with self.app.connection_for_write() as conn:
            self._beat(self._dispatcher(conn), event, task_ids)

    def _dispatcher(self, conn: Any) -> Any:
        return self.app.events.Dispatcher(conn, hostname=self.hostname, enabled=True)

    def _beat(self, dispatcher: Any, event: str, task_ids: list[str]) -> None:
        dispatcher.send(event, held=task_ids, incarnation=self.pid, interval=self.interval)


@dataclass
class Incarnation:
    """One run of one worker, as its beacons describe it."""

    hostname: str
    pid: int
    interval: float
    last_seen: float  # this process's monotonic clock at the last beacon
    held: set[str] = field(default_factory=set)


LostHandler = Callable[[str, int, list[str]], None]


class LivenessMonitor:
    """Listens to beacons; calls `on_lost(hostname, pid, task_ids)` for a dead incarnation."""

    def __init__(self, app: Celery, on_lost: LostHandler, lost_after: float) -> None:
        self.app = app
        self.on_lost = on_lost
        self.lost_after = lost_after
        self.incarnations: dict[tuple[str, int], Incarnation] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_tick = time.monotonic()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sagaflow-liveness", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.app.connection_for_read() as conn:
                    receiver = self.app.events.Receiver(
                        conn,
                        handlers={BEACON_EVENT: self.beacon, OFFLINE_EVENT: self.offline},
                        routing_key=BEACON_ROUTING_KEY,
                    )
                    consumers = receiver.get_consumers(conn.Consumer, conn.default_channel)
                    with contextlib.ExitStack() as stack:
                        for consumer in consumers:
                            stack.enter_context(consumer)
                        while not self._stop.is_set():
                            # A second without beacons: look for the dead, then listen again.
                            with contextlib.suppress(TimeoutError, socket.timeout):
                                conn.drain_events(timeout=1.0)
                            self.check(time.monotonic())
            except Exception as exc:
                if self._stop.is_set():
                    return
                logger.warning("liveness monitor lost its broker connection (%s); retrying", exc)
                self._stop.wait(2.0)

    # -- decisions, kept apart from the connection so they can be exercised directly ----------

    def beacon(self, event: dict[str, Any]) -> None:
        key = _key(event)
        if key is None:
            return
        interval = event.get("interval")
        seen = time.monotonic()
        found = self.incarnations.get(key)
        if found is None:
            every = float(interval) if isinstance(interval, int | float) else BEACON_INTERVAL
            found = self.incarnations[key] = Incarnation(
                key[0], key[1], every if every > 0 else BEACON_INTERVAL, seen
            )
        found.last_seen = seen
        held = event.get("held")
        found.held = {t for t in held if isinstance(t, str)} if isinstance(held, list) else set()
        self.check(seen)

    def offline(self, event: dict[str, Any]) -> None:
        key = _key(event)
        if key is not None:
            self.incarnations.pop(key, None)

    def check(self, now: float) -> None:
        """Declare dead every incarnation silent for `lost_after` seconds."""
        if now - self._last_tick > self.lost_after / 2:
            # This monitor itself was stalled (a loaded machine, a broker reconnect): the
            # silence may be its own. Start counting again rather than guess.
            for incarnation in self.incarnations.values():
                incarnation.last_seen = max(incarnation.last_seen, now)
        self._last_tick = now
        for key, incarnation in list(self.incarnations.items()):
            if now - incarnation.last_seen < max(self.lost_after, 3 * incarnation.interval):
                continue
            del self.incarnations[key]
            if not incarnation.held:
                continue
            logger.warning(
                "worker %s (pid %d) sent no beacon for %.0fs: it is gone; sending the %d "
                "tasks it held again",
                incarnation.hostname,
                incarnation.pid,
                now - incarnation.last_seen,
                len(incarnation.held),
            )
            try:
                self.on_lost(incarnation.hostname, incarnation.pid, sorted(incarnation.held))
            except Exception:
                logger.exception("could not report worker %s as lost", incarnation.hostname)


def _key(event: dict[str, Any]) -> tuple[str, int] | None:
    hostname, pid = event.get("hostname"), event.get("incarnation")
    if isinstance(hostname, str) and isinstance(pid, int) and not isinstance(pid, bool):
        return hostname, pid
    return None


def install_beacon(app: Celery, interval: float = BEACON_INTERVAL) -> None:
    """Every worker started from `app` sends beacons while it runs."""
    if getattr(app, "sagaflow_beacon_installed", False):
        return
    app.sagaflow_beacon_installed = True

    from celery import bootsteps, signals

    class SendBeacons(bootsteps.StartStopStep):  # type: ignore[misc]
        """Started with the consumer; stopped only when the worker shuts down (a connection
        restart stops and starts the consumer's steps, and the beacon carries on through it)."""

        name = "sagaflow.beacon"

        def start(self, consumer: Any) -> None:
            if getattr(consumer, "_sagaflow_beacon", None) is None:
                beacon = consumer._sagaflow_beacon = Beacon(app, consumer.hostname, interval)
                beacon.start()

                def taken(sender: Any = None, **_: Any) -> None:
                    if sender is consumer:
                        beacon.wake()

                signals.task_received.connect(taken, weak=False)

        def shutdown(self, consumer: Any) -> None:
            beacon = getattr(consumer, "_sagaflow_beacon", None)
            if beacon is not None:
                beacon.stop()
                consumer._sagaflow_beacon = None

    app.steps["consumer"].add(SendBeacons)
