"""The producer's and operator's entry point: start sagas, read their state.

A start is recorded in the store as `requested`, then sent to the orchestrator: if the message
is lost, the recovery sweep starts the saga from the store. When the store does not answer, the
start is kept in a local outbox file and recorded from there once it answers again
(sagaflow.client.outbox); a producer may instead accept the broker alone (`durability="broker"`), or
only the store. Reading needs the store.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from celery import Celery

from sagaflow.client.outbox import (
    DrainReport,
    OutboxDrainer,
    StartOutbox,
    StartRequest,
    drain,
)
from sagaflow.client.validation import check_saga_id, checked_start, list_filters, validate_input
from sagaflow.config import Settings
from sagaflow.core.machine import (
    Ignored,
    SagaRecord,
    cancel,
    mark_compensated,
    resolve,
    retry_compensation,
)
from sagaflow.core.protocol import (
    OPERATOR_TASK,
    START_TASK,
    display_repr,
    input_problem,
)
from sagaflow.core.vocabulary import OperatorAction, SagaState, StepStatus
from sagaflow.errors import (
    BrokerUnavailable,
    ConfigurationError,
    InvalidOperation,
    OutboxUnavailable,
    SagaflowError,
    SagaTimeout,
    StoreNotMigrated,
    StoreUnavailable,
)
from sagaflow.messaging.app import create_app
from sagaflow.store.factory import open_store
from sagaflow.store.protocol import HistoryRow, SagaStore, utcnow

logger = logging.getLogger(__name__)

MAX_OPERATOR_TEXT = 10_000  # a step name or a reason (sagaflow.core.messages checks it again)
# How often a client looks for starts another process left in the outbox.
OUTBOX_RECHECK_SECONDS = 60.0
# After a start message could not be sent, later starts already kept in the store or the
# outbox try the broker once instead of retrying for about 2 s: in a broker outage a producer
# stays fast, and the recovery sweep starts what did not go out.
BROKER_RETRY_PAUSE_SECONDS = 5.0
SEND_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5}


class Durability(str, Enum):
    """Where a start is kept when its id is returned, most durable first."""

    STORE = "store"  # recorded in the saga store
    OUTBOX = "outbox"  # the store did not answer: kept in the local outbox until it does
    BROKER = "broker"  # the store did not answer: carried by the broker's message alone

    @classmethod
    def of(cls, value: Durability | str) -> Durability:
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(repr(d.value) for d in cls)
            raise ConfigurationError(
                f"durability must be one of {choices}, not {value!r}"
            ) from None


@dataclass(frozen=True)
class StartReceipt:
    """What `SagaClient.submit` did: the saga's id and where its start was kept."""

    saga_id: str
    durability: Durability


class SagaClient:
    """Start sagas through the broker and read them from the store.

    `durability` is the least durable place a start may be kept in for its id to be returned
    (see `submit`); each call may ask for another."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        app: Celery | None = None,
        store: SagaStore | None = None,
        durability: Durability | str = Durability.OUTBOX,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self._app = app
        self._store = store
        self.durability = Durability.of(durability)
        self._outbox_drainer: OutboxDrainer | None = None
        self._outbox_checked_at: float | None = None
        self._store_answering = True  # for one warning per outage, not one per start
        self._broker_failed_at: float | None = None
        self._drainer_lock = threading.Lock()

    @property
    def app(self) -> Celery:
        if self._app is None:
            self._app = create_app("sagaflow-client", self.settings)
        return self._app

    @property
    def store(self) -> SagaStore:
        if self._store is None:
            self._store = open_store(self.settings.database_url)
        self._look_at_outbox(self._store)
        return self._store

    @property
    def outbox(self) -> StartOutbox:
        """This client's store's starts in the local outbox file."""
        url = self._store.url if self._store is not None else self.settings.database_url
        return StartOutbox(Path(self.settings.outbox_path), url)

    def start(
        self,
        saga_type: str,
        data: Mapping[str, Any],
        *,
        saga_id: str | None = None,
        deadline: float | None = None,
        durability: Durability | str | None = None,
    ) -> str:
        """Start a saga and return its id: `submit(...).saga_id`."""
        receipt = self.submit(
            saga_type, data, saga_id=saga_id, deadline=deadline, durability=durability
        )
        return receipt.saga_id

    def submit(
        self,
        saga_type: str,
        data: Mapping[str, Any],
        *,
        saga_id: str | None = None,
        deadline: float | None = None,
        durability: Durability | str | None = None,
    ) -> StartReceipt:
        """Start a saga; the receipt gives its id and where the start was kept. The saga
        happens once, however often this is called with the same `saga_id`.

        The start is recorded in the store (state `requested`) before its message is sent, so
        a lost message delays the saga (the recovery sweep starts it) but never loses it; once
        the start is kept, a broker that cannot be reached is only logged. When the store does
        not answer, `durability` (default: the client's) says what else will do:

        - "store": nothing else; StoreUnavailable, and nothing is sent.
        - "outbox": the local outbox file, recorded in the store from there once it answers;
          OutboxUnavailable (a StoreUnavailable) if that cannot be written either.
        - "broker": the start message alone, as the orchestrator records it when it takes
          it: lost if the broker loses it first. BrokerUnavailable if it cannot be sent.

        `deadline` (seconds from now) overrides the definition's. Raises InvalidSagaInput at
        once for input that is not a JSON object or is too large.
        """
        wanted = self.durability if durability is None else Durability.of(durability)
        payload = checked_start(saga_type, data, saga_id, deadline, self.settings.max_input_bytes)
        saga_id = saga_id or str(uuid.uuid4())
        kept = self._record_request(
            StartRequest(saga_id, saga_type, payload, deadline, utcnow()), wanted
        )
        kwargs = {
            "saga_id": saga_id,
            "saga_type": saga_type,
            "data": payload,
            **({"deadline": deadline} if deadline is not None else {}),
        }
        failed_at = self._broker_failed_at
        retry = (
            kept is Durability.BROKER  # the message is all there is
            or ";" in self.settings.broker_url  # failover hosts are tried by kombu's retries
            or failed_at is None
            or time.monotonic() - failed_at > BROKER_RETRY_PAUSE_SECONDS
        )
        try:
            if retry:
                self._send_start(kwargs, retry=True)
            else:
                # kombu retries a connection until its connect timeout whatever `retry` says;
                # a connection of its own that gives up at the first refusal does not.
                options = {**self.app.conf.broker_transport_options, "max_retries": 0}
                with self.app.connection_for_write(transport_options=options) as connection:
                    self._send_start(kwargs, retry=False, connection=connection)
            self._broker_failed_at = None
        except SagaflowError:
            raise
        except Exception as exc:  # kombu raises transport-specific errors
            self._broker_failed_at = time.monotonic()
            if kept is Durability.BROKER:
                raise BrokerUnavailable(f"could not enqueue saga {saga_id}: {exc}") from exc
            logger.warning(
                "saga %s kept in the %s but its start could not be sent (%s): the recovery "
                "sweep will start it",
                saga_id,
                kept.value,
                exc,
            )
        return StartReceipt(saga_id, kept)

    def _send_start(self, kwargs: dict[str, Any], retry: bool, connection: Any = None) -> None:
        self.app.send_task(
            START_TASK,
            kwargs=kwargs,
            argsrepr="()",
            kwargsrepr=display_repr(kwargs),
            queue=self.settings.queue,
            retry=retry,
            retry_policy=SEND_RETRY_POLICY,
            connection=connection,
        )

    def _record_request(self, request: StartRequest, wanted: Durability) -> Durability:
        """Keep the start as `requested`: in the store (now, or from an earlier start with the
        same id), else where `wanted` allows. Returns where it was kept."""
        saga, history = request.as_saga()
        try:
            try:
                self.store.create(saga, history)
            except StoreNotMigrated:
                raise  # a store to set up, not one down: nothing will ever record the start
            except StoreUnavailable:
                # Once more, on a new connection: a pooled one the server dropped (a restart,
                # a proxy's idle timeout) fails once; a database that is down fails again.
                self.store.create(saga, history)
        except StoreNotMigrated as exc:
            raise StoreNotMigrated(f"saga {request.saga_id} not started: {exc}") from exc
        except StoreUnavailable as exc:
            return self._keep_without_store(request, wanted, exc)
        self._store_answering = True
        if self._outbox_drainer is not None and self._outbox_drainer.running:
            self._outbox_drainer.wake(store_answered=True)
        return Durability.STORE

    def _keep_without_store(
        self, request: StartRequest, wanted: Durability, problem: StoreUnavailable
    ) -> Durability:
        saga_id = request.saga_id
        if wanted is Durability.STORE:
            raise StoreUnavailable(
                f"saga {saga_id} not started: {problem} (durability 'store' takes nothing else)"
            ) from problem
        if wanted is Durability.BROKER:
            logger.info(
                "saga %s not recorded (%s): starting through the broker only", saga_id, problem
            )
            return Durability.BROKER
        outbox = self.outbox
        try:
            outbox.put(request)
        except OutboxUnavailable as exc:
            raise OutboxUnavailable(f"saga {saga_id} not started: {problem}; and {exc}") from exc
        if self._store_answering:
            logger.warning(
                "saga store not answering (%s): starts are kept in the outbox %s until it does",
                problem,
                outbox.path,
            )
            self._store_answering = False
        logger.info("saga %s kept in the outbox %s", saga_id, outbox.path)
        self._drainer(self.store).wake(added=True)
        return Durability.OUTBOX

    def _drainer(self, store: SagaStore) -> OutboxDrainer:
        with self._drainer_lock:
            if self._outbox_drainer is None:
                self._outbox_drainer = OutboxDrainer(self.outbox, store)
            return self._outbox_drainer

    def _look_at_outbox(self, store: SagaStore) -> None:
        """Drain what this or another process left in the outbox: soon while a drain runs,
        else on the first call and once a minute, if the file exists (no I/O otherwise)."""
        drainer = self._outbox_drainer
        if drainer is not None and drainer.running:
            drainer.wake()
            return
        now = time.monotonic()
        if self._outbox_checked_at is not None and now - self._outbox_checked_at < (
            OUTBOX_RECHECK_SECONDS
        ):
            return
        self._outbox_checked_at = now
        if os.path.exists(self.settings.outbox_path):
            self._drainer(store).wake()

    def drain_outbox(self) -> DrainReport:
        """Record this store's starts from the outbox now, in the caller's thread (the
        background drain does the same on its own). StoreUnavailable if the store does not
        answer."""
        return drain(self.outbox, self.store)

    def cancel(self, saga_id: str, reason: str = "") -> int:
        """Cancel a running saga: the step in flight finishes, then what completed is
        compensated and the saga ends `cancelled`. Returns the version before."""
        reason = _text_argument("reason", reason)
        saga = self.get(saga_id)
        outcome = cancel(saga, reason, utcnow())
        if isinstance(outcome, Ignored):
            raise InvalidOperation(f"cannot cancel saga {saga_id}: {outcome.reason}")
        self._operate(OperatorAction.CANCEL, saga_id, reason=reason)
        return saga.version

    def retry(self, saga_id: str) -> int:
        """Resume a saga stopped in compensation_failed at the compensation that failed.

        Returns the saga's version before the retry, for `wait(..., newer_than=)`."""
        saga = self.get(saga_id)
        outcome = retry_compensation(saga, utcnow())
        if isinstance(outcome, Ignored):
            raise InvalidOperation(f"cannot retry saga {saga_id}: {outcome.reason}")
        self._operate(OperatorAction.RETRY, saga_id)
        return saga.version

    def mark_compensated(self, saga_id: str, step: str, reason: str) -> int:
        """Record that a failed compensation was done by hand, with the reason, and let the
        saga carry on compensating the steps before it. Returns the version before."""
        step, reason = _text_argument("step", step), _text_argument("reason", reason)
        if not reason.strip():
            raise InvalidOperation("a reason is required to mark a step compensated")
        saga = self.get(saga_id)
        outcome = mark_compensated(saga, step, reason, utcnow())
        if isinstance(outcome, Ignored):
            raise InvalidOperation(f"cannot mark {step!r} of saga {saga_id}: {outcome.reason}")
        self._operate(OperatorAction.MARK_COMPENSATED, saga_id, step=step, reason=reason)
        return saga.version

    def resolve(
        self, saga_id: str, step: str, applied: bool, reason: str, result: Any = None
    ) -> int:
        """Say whether the step an escalated saga stopped at took effect, with the reason.

        Applied: the step counts as completed (with `result`) and the saga goes on. Not
        applied: the steps before it are compensated (a retriable step is sent again).
        Returns the version before."""
        step, reason = _text_argument("step", step), _text_argument("reason", reason)
        if not isinstance(applied, bool):
            raise InvalidOperation(f"applied must be true or false, not {applied!r:.80}")
        if not reason.strip():
            raise InvalidOperation("a reason is required to resolve a step")
        if result is not None:
            validate_input({"result": result}, self.settings.max_input_bytes)
        saga = self.get(saga_id)
        outcome = resolve(saga, step, applied, reason, utcnow(), result)
        if isinstance(outcome, Ignored):
            raise InvalidOperation(f"cannot resolve {step!r} of saga {saga_id}: {outcome.reason}")
        asked = {"step": step, "reason": reason, "applied": applied, "result": result}
        self._operate(OperatorAction.RESOLVE, saga_id, **asked)
        return saga.version

    def _operate(self, action: OperatorAction, saga_id: str, **kwargs: Any) -> None:
        # Checked above for a clear error; the orchestrator applies it (and checks again).
        try:
            self.app.send_task(
                OPERATOR_TASK,
                kwargs={"action": action.value, "saga_id": saga_id, **kwargs},
                queue=self.settings.queue,
                retry=True,
                retry_policy=SEND_RETRY_POLICY,
            )
        except Exception as exc:
            raise BrokerUnavailable(f"could not send {action} for saga {saga_id}: {exc}") from exc

    def get(self, saga_id: str) -> SagaRecord:
        """The saga with its steps. SagaNotFound until the orchestrator has recorded it, and at
        once for an id no saga can have."""
        check_saga_id(saga_id)
        return self.store.get(saga_id)

    def wait(
        self,
        saga_id: str,
        timeout: float = 30.0,
        poll_interval: float = 0.05,
        newer_than: int | None = None,
    ) -> SagaRecord:
        """Poll the store until the saga is terminal (and, with `newer_than`, has changed since
        that version); SagaTimeout says where it was."""
        deadline = time.monotonic() + timeout
        last: SagaRecord | None = None
        while True:
            last = self.store.load(saga_id)
            if last is not None and wait_is_over(last.state, last.version, newer_than):
                return last
            if time.monotonic() >= deadline:
                raise not_finished(saga_id, timeout, last)
            time.sleep(poll_interval)

    def list_sagas(self, **filters: Any) -> list[SagaRecord]:
        """Sagas newest first; filters: state, saga_type, since, id_prefix, limit, offset, and
        where: input fields as `{"order_id": "o-4711"}` or `["customer.id=c-1"]`."""
        return self.store.list_sagas(**list_filters(filters))

    def history(self, saga_id: str) -> list[HistoryRow]:
        self.get(saga_id)
        return self.store.history(saga_id)

    def close(self) -> None:
        """Release the store's connections; a drain of the outbox under way may finish first
        (a few seconds at most, none while the store does not answer)."""
        if self._outbox_drainer is not None:
            self._outbox_drainer.finish()
            self._outbox_drainer = None
        if self._store is not None:
            self._store.dispose()


def _text_argument(name: str, value: object) -> str:
    """Text an operator gives (a step name, a reason), refused with the reason when the store
    could not keep it."""
    if not isinstance(value, str):
        raise InvalidOperation(f"{name} must be text, not {type(value).__name__}")
    problem = input_problem(value)
    if problem is not None:
        raise InvalidOperation(f"{name} refused: {problem}")
    if len(value) > MAX_OPERATOR_TEXT:
        raise InvalidOperation(f"{name} is over {MAX_OPERATOR_TEXT} characters")
    return value


def wait_is_over(state: SagaState, version: int, newer_than: int | None) -> bool:
    """What `wait` waits for: a terminal saga, changed since `newer_than` if given."""
    return state.is_terminal and (newer_than is None or version > newer_than)


def not_finished(saga_id: str, timeout: float, last: SagaRecord | None) -> SagaTimeout:
    """The error of a wait that timed out, saying where the saga was."""
    where = "not recorded yet" if last is None else describe_saga(last)
    return SagaTimeout(f"saga {saga_id} not finished after {timeout:g}s: {where}")


def describe_saga(saga: SagaRecord) -> str:
    where = saga.state.value
    if saga.current_step is not None and saga.current_step < len(saga.steps):
        step = saga.steps[saga.current_step]
        where += f", step {step.name!r} is {step.status.value}"
        queue = step.queue if step.status is StepStatus.EXECUTING else step.compensation_queue
        if queue:
            where += f" (queue {queue!r})"
    return where


__all__ = [
    "BrokerUnavailable",
    "Durability",
    "InvalidOperation",
    "OutboxUnavailable",
    "SagaClient",
    "StartReceipt",
    "validate_input",
]
