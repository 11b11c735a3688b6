"""The orchestrator: applies saga events to the store and hands the resulting commands on.

Each event loads the saga under its row lock, applies the pure state machine, stores the
transition, and only then dispatches what the transition asks for (through a Dispatcher) and
publishes its events (through an EventPublisher). A duplicate or late outcome finds its step no
longer waiting and changes nothing. Knows no Celery: sagaflow.messaging wires it to Celery.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sagaflow.config import DEFAULT_MAX_MESSAGE_BYTES
from sagaflow.core.definitions import (
    Phase,
    Registry,
    SagaState,
    Step,
    StepStatus,
    check_deadline,
)
from sagaflow.core.machine import (
    Command,
    DispatchTask,
    ErrorInfo,
    Event,
    HistoryEntry,
    Ignored,
    SagaRecord,
    StepSucceeded,
    Transition,
    apply,
    begin,
    cancel,
    mark_compensated,
    new_saga,
    on_timer,
    pass_deadline,
    redrive,
    rejected_saga,
    resolve,
    retry_compensation,
)
from sagaflow.core.machine import worker_lost as machine_worker_lost
from sagaflow.core.messages import (
    Malformed,
    plain_saga_id,
)
from sagaflow.core.protocol import (
    SAGA_ID_PATTERN,
    input_problem,
    strict_json,
)
from sagaflow.core.quarantine import QuarantinedMessage
from sagaflow.core.records import parse_task_id
from sagaflow.core.vocabulary import HistoryEvent, OperatorAction
from sagaflow.engine.ports import Dispatcher, EventPublisher, Quarantine
from sagaflow.errors import (
    ConcurrencyConflict,
    DefinitionError,
    InvalidSagaInput,
    UnknownSagaType,
)
from sagaflow.store.protocol import IGNORED_IN_HISTORY, Decision, SagaStore, utcnow

logger = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 20
MAX_ID_LENGTH = 64  # the same limit as the client's MAX_SAGA_ID_LENGTH
MAX_TYPE_LENGTH = 200


@dataclass
class RecoveryReport:
    redriven: list[tuple[str, str, str]] = field(default_factory=list)  # saga, step, state
    republished: list[tuple[str, str]] = field(default_factory=list)  # saga, event
    timed_out: list[tuple[str, str]] = field(default_factory=list)  # saga, step
    retried: list[tuple[str, str]] = field(default_factory=list)  # saga, retriable step
    deadline_exceeded: list[str] = field(default_factory=list)  # sagas being stopped
    started: list[str] = field(default_factory=list)  # requested sagas whose start was lost


class Orchestrator:
    """Applies saga events to the store; dispatches and publishes what the transitions ask."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        store: SagaStore,
        registry: Registry,
        publisher: EventPublisher,
        queue: str,
        max_input_bytes: int = 1_000_000,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        *,
        quarantine: Quarantine,
    ) -> None:
        self.dispatcher = dispatcher
        self.store = store
        self.quarantine = quarantine
        self.max_message_bytes = max_message_bytes
        self.registry = registry
        self.publisher = publisher
        self.queue = queue
        self.max_input_bytes = max_input_bytes
        self.stall_timeout = 300.0

    # -- starting ------------------------------------------------------------------------------

    def start(
        self, saga_id: object, saga_type: object, data: object, deadline: object = None
    ) -> str:
        """Start a saga; record a rejection on bad input.

        A saga the producer recorded as `requested` is started from its stored type, input
        and deadline. Otherwise (a producer without the store) it is recorded here from the
        message; `deadline` (seconds) overrides the definition's.
        """
        if isinstance(saga_id, str) and SAGA_ID_PATTERN.match(saga_id):
            decision = self.store.promote(saga_id, self._begin_requested)
            if decision.saga is not None:
                self._after_promote(saga_id, decision)
                return saga_id
        now = utcnow()
        problem: str | None = None
        if not isinstance(saga_id, str) or not SAGA_ID_PATTERN.match(saga_id):
            problem = (
                f"invalid saga id {saga_id!r:.100}: at most 64 letters, digits and _.:@- "
                "(starting with a letter or digit)"
            )
            saga_id = str(uuid.uuid4())
        assert isinstance(saga_id, str)
        type_name = saga_type if isinstance(saga_type, str) else repr(saga_type)
        try:
            if problem is not None:
                raise InvalidSagaInput(problem)
            steps, seconds = self._plan(saga_type, data, deadline)
        except Exception as exc:
            error = self._planning_error(saga_id, type_name, exc)
            # What a producer sent is cleaned before it is stored, so the rejection itself can
            # be recorded whatever the input held.
            type_name = strict_json(type_name)
            data = strict_json(data)
            stored_data = data if isinstance(data, dict) and problem is None else {"input": data}
            if len(json.dumps(stored_data, default=repr)) > self.max_input_bytes:
                stored_data = {"input": "<omitted: over the size limit>"}
            if not self._record_rejected(
                saga_id, type_name[:MAX_TYPE_LENGTH], stored_data, error, now
            ):
                logger.info("saga %s already recorded: duplicate start ignored", saga_id)
            return saga_id
        assert isinstance(saga_type, str)
        saga = new_saga(saga_id, saga_type, data, steps, now, seconds)
        transition = begin(saga, now)
        # One insert records the saga already running its first step; a saga id the store
        # already has (a redelivered or duplicated start) is refused by it, so nothing is sent.
        recorded = HistoryEntry(HistoryEvent.SAGA_RECORDED, None, saga.state)
        if not self.store.create(transition.saga, [recorded, *transition.history]):
            logger.info("saga %s already recorded: duplicate start ignored", saga_id)
            return saga_id
        self._execute(transition.commands, [])
        return saga_id

    def _plan(
        self, saga_type: object, data: object, deadline: object
    ) -> tuple[list[Step], float | None]:
        """The saga's steps and deadline (seconds); raises what makes the start a rejection."""
        type_name = saga_type if isinstance(saga_type, str) else repr(saga_type)
        if not isinstance(saga_type, str) or len(saga_type) > MAX_TYPE_LENGTH:
            raise UnknownSagaType(f"unknown saga type {type_name[:MAX_TYPE_LENGTH]!r}")
        unstorable = input_problem(data)
        if unstorable is not None:
            raise InvalidSagaInput(f"saga input refused: {unstorable}")
        size = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())
        if size > self.max_input_bytes:
            raise InvalidSagaInput(
                f"saga input is {size} bytes of JSON, over the limit of {self.max_input_bytes}"
            )
        steps = list(self.registry.plan(saga_type, data))
        try:
            seconds = check_deadline("deadline", deadline)
        except DefinitionError as exc:
            raise InvalidSagaInput(str(exc)) from exc
        if seconds is None:
            seconds = self.registry.deadline(saga_type)
        return steps, seconds

    def _planning_error(self, saga_id: str, type_name: str, exc: Exception) -> ErrorInfo:
        # Anything the definition raises (a bug in define_steps included) is recorded: a start
        # is never acknowledged without a trace in the store.
        if not isinstance(exc, (UnknownSagaType, InvalidSagaInput)):
            logger.exception("saga %s: planning %r failed", saga_id, type_name)
        return ErrorInfo(type=type(exc).__name__, message=strict_json(str(exc)))

    def _begin_requested(self, request: SagaRecord, started_by: str = "start") -> Transition:
        """The transition that starts (or rejects) a saga recorded as `requested`."""
        now = utcnow()
        try:
            steps, seconds = self._plan(request.saga_type, request.data, None)
        except Exception as exc:
            error = self._planning_error(request.saga_id, request.saga_type, exc)
            rejected = replace(
                request,
                state=SagaState.REJECTED,
                error=error,
                updated_at=now,
                finished_at=now,
                deadline_at=None,
            )
            entry = HistoryEntry(
                HistoryEvent.SAGA_REJECTED,
                request.state,
                rejected.state,
                None,
                {"error": error.to_json()},
            )
            return Transition(rejected, history=(entry,))
        # The deadline counts from the request: the moment the producer was told the id.
        requested_at = request.created_at or now
        saga = replace(
            new_saga(request.saga_id, request.saga_type, request.data, steps, now),
            created_at=requested_at,
            deadline_at=request.deadline_at
            or (requested_at + timedelta(seconds=seconds) if seconds else None),
        )
        transition = begin(saga, now)
        detail: dict[str, Any] | None = {"by": started_by} if started_by != "start" else None
        recorded = HistoryEntry(HistoryEvent.SAGA_RECORDED, request.state, saga.state, None, detail)
        return replace(transition, history=(recorded, *transition.history))

    def _after_promote(self, saga_id: str, decision: Decision) -> bool:
        """Send what starting a requested saga asks for. True if this call started it."""
        outcome = decision.outcome
        if not isinstance(outcome, Transition):
            logger.info("saga %s already started: duplicate start ignored", saga_id)
            return False
        if outcome.saga.state is SagaState.REJECTED:
            logger.warning("saga %s rejected: %s", saga_id, outcome.saga.error)
            return False
        self._execute(outcome.commands, decision.event_ids)
        return True

    # -- refused messages ----------------------------------------------------------------------

    def refuse(self, record: QuarantinedMessage, logged: bool = False) -> None:
        """Keep a message that cannot be a valid task in the quarantine (once per message).
        `logged`: the worker that refused it already logged the warning."""
        if self.quarantine.add(record):
            logger.log(
                logging.INFO if logged else logging.WARNING,
                "message %s (task %r) quarantined as %s: %s; see `sagaflow quarantine show %s`",
                record.task_id,
                record.task,
                record.reason.value,
                record.detail,
                record.id,
            )
        else:
            logger.info("message %s already in the quarantine as %s", record.task_id, record.id)

    def refuse_start(self, why: Malformed, record: QuarantinedMessage) -> None:
        """A start of the wrong shape: a rejected saga if it names a new, plain saga id (as every
        other bad start), else a quarantined message."""
        if why.saga_id is not None:
            error = ErrorInfo(type=InvalidSagaInput.__name__, message=why.reason)
            if self._record_rejected(why.saga_id, "<malformed start>", {}, error, utcnow()):
                return
        self.refuse(record)

    def _record_rejected(
        self, saga_id: str, saga_type: str, data: Any, error: ErrorInfo, now: datetime
    ) -> bool:
        """Store a saga rejected before it started; False if its id is already recorded."""
        saga = rejected_saga(saga_id, saga_type, data, error, now)
        entry = HistoryEntry(
            HistoryEvent.SAGA_REJECTED, None, saga.state, None, {"error": error.to_json()}
        )
        if not self.store.create(saga, [entry]):
            return False
        logger.warning("saga %s rejected: %s", saga_id, error)
        return True

    # -- workers lost --------------------------------------------------------------------------

    def worker_lost(self, hostname: str, task_ids: Sequence[str]) -> list[str]:
        """Send again every step task `hostname` held when it died; the ids sent again."""
        resent: list[str] = []
        for task_id in task_ids:
            parsed = parse_task_id(task_id)
            if parsed is None or plain_saga_id(parsed[0]) is None:
                continue  # not a saga step (the worker runs other tasks too)
            saga_id, position, phase, attempt = parsed

            def lost(
                saga: SagaRecord,
                position: int = position,
                phase: Phase = phase,
                attempt: int = attempt,
            ) -> Transition | Ignored:
                return machine_worker_lost(saga, position, phase, attempt, hostname, utcnow())

            decision = self._decide(saga_id, lost)
            if isinstance(decision.outcome, Transition):
                resent.append(task_id)
        if resent:
            logger.warning(
                "worker %s is gone: sent %d of its step tasks again (%s)",
                hostname,
                len(resent),
                ", ".join(resent[:10]),
            )
        return resent

    # -- step outcomes -------------------------------------------------------------------------

    def handle(self, saga_id: str, event: Event) -> bool:
        """Apply a step outcome. True if it moved the saga, False if it was ignored."""
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                decision = self._decide(saga_id, lambda saga: apply(saga, event, utcnow()))
            except ConcurrencyConflict:
                continue
            if decision.saga is None:
                logger.warning("outcome for unknown saga %r ignored: %r", saga_id, event)
                return False
            if isinstance(decision.outcome, Ignored):
                self._note_ignored(decision.saga, event, decision.outcome.reason)
                return False
            return True
        raise ConcurrencyConflict(f"saga {saga_id}: too many concurrent updates")

    def _decide(
        self, saga_id: str, decide: Callable[[SagaRecord], Transition | Ignored]
    ) -> Decision:
        """Store the transition `decide` computes, then send what it asks for."""
        decision = self.store.transition(saga_id, decide)
        if isinstance(decision.outcome, Transition):
            self._execute(decision.outcome.commands, decision.event_ids)
        return decision

    # -- operator actions ------------------------------------------------------------------------

    def operate(
        self,
        action: OperatorAction,
        saga_id: str,
        step: str | None,
        reason: str | None,
        applied: bool | None = None,
        result: Any = None,
    ) -> bool:
        """Apply an operator action: `retry`, `mark_compensated`, `cancel` or `resolve`. False
        if it did not apply."""
        now = utcnow()

        def decide(saga: SagaRecord) -> Transition | Ignored:
            if action is OperatorAction.RETRY:
                return retry_compensation(saga, now)
            if action is OperatorAction.MARK_COMPENSATED:
                return mark_compensated(saga, step or "", reason or "", now)
            if action is OperatorAction.CANCEL:
                return cancel(saga, reason or "", now)
            if action is OperatorAction.RESOLVE:
                if not isinstance(applied, bool):
                    return Ignored("resolve needs applied: true or false")
                return resolve(saga, step or "", applied, reason or "", now, strict_json(result))
            return Ignored(f"unknown operator action {action!r}")

        decision = self._decide(saga_id, decide)
        if decision.saga is None:
            logger.warning("operator %s for unknown saga %r ignored", action, saga_id)
            return False
        if isinstance(decision.outcome, Ignored):
            logger.warning(
                "operator %s on saga %s ignored: %s", action, saga_id, decision.outcome.reason
            )
            return False
        return True

    # -- recovery ------------------------------------------------------------------------------

    def recover(self, stalled_for: float, limit: int = 500) -> RecoveryReport:
        """Re-drive sagas that made no progress for `stalled_for` seconds and publish events
        whose publishing was lost. Safe to run from several processes at once."""
        now = utcnow()
        cutoff = now - timedelta(seconds=stalled_for)
        report = RecoveryReport()
        for saga_id in self.store.requested(cutoff, limit):
            # Started from the stored request: the start message was lost (or is very late,
            # and will find the saga started). The promote lock makes it start once.
            try:
                decision = self.store.promote(
                    saga_id, lambda request: self._begin_requested(request, "recovery")
                )
            except ConcurrencyConflict:
                continue
            if decision.saga is not None and self._after_promote(saga_id, decision):
                report.started.append(saga_id)
        for saga_id, position in self.store.timed_out(now, limit):

            def due(saga: SagaRecord, position: int = position) -> Transition | Ignored:
                return on_timer(saga, position, utcnow())

            try:
                decision = self._decide(saga_id, due)
            except ConcurrencyConflict:
                continue
            if isinstance(decision.outcome, Transition) and decision.saga is not None:
                step = decision.saga.steps[position]
                timers = (
                    report.retried if step.status is StepStatus.WAITING_RETRY else report.timed_out
                )
                timers.append((saga_id, step.name))
        for saga_id in self.store.overdue(now, limit):
            try:
                decision = self._decide(saga_id, lambda saga: pass_deadline(saga, utcnow()))
            except ConcurrencyConflict:
                continue
            outcome = decision.outcome
            if isinstance(outcome, Transition) and outcome.saga.cancel_requested_at is not None:
                report.deadline_exceeded.append(saga_id)
        for saga_id in self.store.stalled(cutoff, limit):
            try:
                decision = self._decide(saga_id, lambda saga: redrive(saga, cutoff, utcnow()))
            except ConcurrencyConflict:
                continue  # someone else moved it: not stalled any more
            if isinstance(decision.outcome, Transition):
                step = decision.outcome.saga.steps[decision.outcome.saga.current_step or 0]
                report.redriven.append((saga_id, step.name, decision.outcome.saga.state.value))
        for event in self.store.unpublished_events(cutoff, limit):
            try:
                self.publisher.publish(event.name, event.payload)
            except Exception:
                logger.exception(
                    "recovery: publishing %s of saga %s failed", event.name, event.saga_id
                )
                continue
            self.store.mark_published([event.id])
            report.republished.append((event.saga_id, event.name))
        if (
            report.started
            or report.redriven
            or report.republished
            or report.timed_out
            or report.retried
            or report.deadline_exceeded
        ):
            logger.warning(
                "recovery: started %d requested sagas, %d steps timed out, %d retried, "
                "%d sagas past their deadline, re-drove %d stalled sagas, republished %d events",
                len(report.started),
                len(report.timed_out),
                len(report.retried),
                len(report.deadline_exceeded),
                len(report.redriven),
                len(report.republished),
            )
        return report

    def _note_ignored(self, saga: SagaRecord, event: Event, reason: str) -> None:
        step = saga.steps[event.position].name if 0 <= event.position < len(saga.steps) else None
        outcome = "succeeded" if isinstance(event, StepSucceeded) else "failed"
        detail = {
            "outcome": outcome,
            "phase": event.phase.value,
            "attempt": event.attempt,
            "reason": reason,
        }
        count = self.store.record_ignored(saga.saga_id, step, detail)
        # Past the history's bound a flood is only counted: a line each would grow the log.
        if count <= IGNORED_IN_HISTORY:
            logger.info("saga %s: %s %s outcome ignored: %s", saga.saga_id, step, outcome, reason)
        if count == IGNORED_IN_HISTORY:
            logger.warning(
                "saga %s: %d outcomes ignored; further ones are only counted (sagaflow status)",
                saga.saga_id,
                count,
            )

    # -- commands ------------------------------------------------------------------------------

    def _execute(self, commands: Sequence[Command], event_ids: Sequence[int]) -> None:
        published = False
        for command in commands:
            if isinstance(command, DispatchTask):
                self.dispatch(command)
            else:
                self.publisher.publish(command.name, command.payload)
                published = True
        if published:
            self.store.mark_published(event_ids)

    def dispatch(self, command: DispatchTask) -> None:
        self.dispatcher.dispatch(command)
