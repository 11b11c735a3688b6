"""sagaflow's vocabulary: every closed set of names it stores or sends, as str-valued enums.

A member is a `str` equal to its value (it compares, hashes and encodes as that text), so the
rows and messages written with these names are the same bytes as when they were plain strings:
stores and queues written by earlier versions read back unchanged. Defined here once; everything
else writes and matches the members, never the text.
"""

from __future__ import annotations

import enum


class Name(str, enum.Enum):
    """A name that reads as its value: str() and format() give the text (as 3.11's StrEnum),
    so a member can stand wherever the plain string did, in messages and f-strings too."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)


class SagaState(Name):
    """Where a saga is. Terminal for the engine: COMPLETED, FAILED, COMPENSATION_FAILED,
    REJECTED, CANCELLED, ESCALATED (the last two of which an operator can resume)."""

    # Recorded by the producer (SagaClient.start), not planned yet: the orchestrator's start
    # message or, if that message is lost, the recovery sweep starts it.
    REQUESTED = "requested"
    STARTED = "started"  # recorded, first step not yet dispatched
    PENDING = "pending"  # steps are running forward
    COMPENSATING = "compensating"  # a step failed; completed steps are being undone in reverse
    COMPLETED = "completed"  # every step succeeded
    FAILED = "failed"  # a step failed and every completed step was compensated
    COMPENSATION_FAILED = "compensation_failed"  # a compensation failed: needs an operator
    REJECTED = "rejected"  # never started: unknown saga type or invalid input
    CANCELLED = "cancelled"  # cancelled while running; every completed step compensated
    # A step's outcome is unknown or it cannot succeed by retrying: an operator says what
    # happened (`sagaflow resolve`) and the saga carries on from there.
    ESCALATED = "escalated"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def needs_operator(self) -> bool:
        """Stopped until an operator acts (`sagaflow retry`, `mark-compensated`, `resolve`)."""
        return self in _NEEDS_OPERATOR


_TERMINAL = frozenset(
    {
        SagaState.COMPLETED,
        SagaState.FAILED,
        SagaState.COMPENSATION_FAILED,
        SagaState.REJECTED,
        SagaState.CANCELLED,
        SagaState.ESCALATED,
    }
)
_NEEDS_OPERATOR = frozenset({SagaState.COMPENSATION_FAILED, SagaState.ESCALATED})


class StepStatus(Name):
    """Where one step is, across its action and its compensation."""

    PENDING = "pending"  # not dispatched yet
    EXECUTING = "executing"  # action dispatched, outcome not known yet
    COMPLETED = "completed"  # action succeeded
    FAILED = "failed"  # action failed (after the task's own retries)
    COMPENSATING = "compensating"  # compensation dispatched, outcome not known yet
    COMPENSATED = "compensated"  # compensation succeeded
    COMPENSATION_FAILED = "compensation_failed"  # compensation failed: needs an operator
    SKIPPED = "skipped"  # never ran because an earlier step failed
    WAITING_RETRY = "waiting_retry"  # a retriable step failed; sent again when its timer is due
    VERIFYING = "verifying"  # the action timed out; its verify task says whether it took effect
    OUTCOME_UNKNOWN = "outcome_unknown"  # timed out and not verified: an operator resolves it


class Phase(Name):
    ACTION = "action"
    COMPENSATION = "compensation"
    VERIFY = "verify"  # asks whether an action whose outcome is unknown took effect


class HistoryEvent(Name):
    """The `event` of a saga history row: what happened to the saga, in the order it can."""

    SAGA_REQUESTED = "saga_requested"  # recorded by the producer (or drained from its outbox)
    SAGA_RECORDED = "saga_recorded"  # planned and running (recorded by the orchestrator)
    SAGA_REJECTED = "saga_rejected"  # never started: unknown type, invalid input
    SAGA_STARTED = "saga_started"
    STEP_DISPATCHED = "step_dispatched"
    STEP_COMPLETED = "step_completed"
    STEP_FAILED = "step_failed"
    STEP_RETRY_SCHEDULED = "step_retry_scheduled"  # a retriable step waits for its timer
    STEP_RETRIED = "step_retried"
    STEP_REDRIVEN = "step_redriven"  # sent again: stalled, or its worker was lost
    STEP_TIMED_OUT = "step_timed_out"
    VERIFY_DISPATCHED = "verify_dispatched"
    VERIFY_REDRIVEN = "verify_redriven"
    STEP_VERIFIED = "step_verified"
    STEP_RESOLVED = "step_resolved"  # an operator said whether an escalated step took effect
    SAGA_ESCALATED = "saga_escalated"
    COMPENSATION_STARTED = "compensation_started"
    COMPENSATION_DISPATCHED = "compensation_dispatched"
    COMPENSATION_REDRIVEN = "compensation_redriven"
    STEP_COMPENSATED = "step_compensated"
    COMPENSATION_FAILED = "compensation_failed"
    COMPENSATION_RETRIED = "compensation_retried"  # an operator's `retry`
    STEP_COMPENSATED_MANUALLY = "step_compensated_manually"  # an operator's `mark-compensated`
    SAGA_COMPLETED = "saga_completed"
    SAGA_FAILED = "saga_failed"
    SAGA_CANCELLED = "saga_cancelled"
    CANCEL_REQUESTED = "cancel_requested"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    DEADLINE_DROPPED = "deadline_dropped"  # past its pivot: a saga is let finish
    OUTCOME_IGNORED = "outcome_ignored"  # a note on the saga (a late or stray outcome), no change


class SagaOutcome(Name):
    """How a saga stopped, as its published event names it: `<SagaType><outcome>`
    (`OrderCompleted`)."""

    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    COMPENSATION_FAILED = "CompensationFailed"
    ESCALATED = "Escalated"


class ErrorType(Name):
    """The `type` of the errors sagaflow itself records (a service's error carries the name of
    the exception it raised instead)."""

    UNKNOWN = "Unknown"  # an error payload that did not say
    UNKNOWN_ERROR = "UnknownError"  # failed on a worker without sagaflow's service support
    NOT_REGISTERED = "NotRegistered"  # no worker on the step's queue has its task
    STEP_TIMEOUT = "StepTimeout"
    VERIFY_TIMEOUT = "VerifyTimeout"
    INVALID_VERIFY_REPLY = "InvalidVerifyReply"
    NOT_APPLIED = "NotApplied"  # its verify (or an operator) said the step did not take effect
    CANCELLED = "Cancelled"
    DEADLINE_EXCEEDED = "DeadlineExceeded"


class OnTimeout(Name):
    """What a step that timed out (its outcome unknown: it may have half-happened) leads to."""

    COMPENSATE = "compensate"  # compensate it with the steps before it
    FAIL = "fail"  # take it as not done: compensate only the steps before it
    VERIFY = "verify"  # its `verify` task says whether it took effect
    ESCALATE = "escalate"  # stop; an operator says what happened


class OperatorAction(Name):
    """What an operator message asks the orchestrator to do."""

    RETRY = "retry"  # send a failed compensation again
    MARK_COMPENSATED = "mark_compensated"
    CANCEL = "cancel"
    RESOLVE = "resolve"  # say whether an escalated step took effect
