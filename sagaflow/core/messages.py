"""The arguments of sagaflow's own tasks, checked before anything acts on them. No I/O.

A message on a queue can come from anyone who can reach the broker. Each parser takes the raw
positional and keyword arguments a task message carried and returns either the typed message or
`Malformed` with the reason, so an orchestrator task never raises on what it was sent: a wrongly
shaped message is quarantined (or, for a start that names a plain saga id, recorded as a rejected
saga) instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sagaflow.core.protocol import SAGA_ID_PATTERN
from sagaflow.core.vocabulary import OperatorAction, Phase

OPERATOR_ACTIONS = tuple(action.value for action in OperatorAction)
MAX_NAME_CHARS = 200  # step names and reasons are stored in columns of this size or shown
MAX_REASON_CHARS = 10_000
MAX_TASK_ID_CHARS = 255


@dataclass(frozen=True)
class Malformed:
    """Why a message cannot be the task it claims to be; the plain saga id it names, if any."""

    reason: str
    saga_id: str | None = None


@dataclass(frozen=True)
class StartMessage:
    saga_id: object
    saga_type: object
    data: object
    deadline: object


@dataclass(frozen=True)
class OutcomeMessage:
    """What a step-outcome callback reports: (saga, position, phase, attempt) and its payload."""

    saga_id: str
    position: int
    phase: Phase
    attempt: int
    tries: int
    step: str | None
    result: Any = None
    error: Any = None


@dataclass(frozen=True)
class OperatorMessage:
    action: OperatorAction
    saga_id: str
    step: str | None
    reason: str | None
    applied: bool | None
    result: Any


def plain_saga_id(value: object) -> str | None:
    """`value` if it is a saga id sagaflow could have issued, else None."""
    if isinstance(value, str) and SAGA_ID_PATTERN.match(value):
        return value
    return None


def _bind(
    args: Sequence[Any], kwargs: Mapping[str, Any], names: Sequence[str]
) -> dict[str, Any] | str:
    """Arguments by name, as Python would bind them to `def f(*names)`; or why they do not."""
    if not isinstance(args, list | tuple):
        return f"positional arguments must be a list, not {type(args).__name__}"
    if not isinstance(kwargs, Mapping):
        return f"keyword arguments must be an object, not {type(kwargs).__name__}"
    if len(args) > len(names):
        return f"takes at most {len(names)} positional arguments, got {len(args)}"
    bound: dict[str, Any] = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key not in names:
            return f"unexpected keyword argument {str(key)[:80]!r}"
        if key in bound:
            return f"argument {key!r} given twice"
        bound[key] = value
    return bound


def parse_start(args: Sequence[Any], kwargs: Mapping[str, Any]) -> StartMessage | Malformed:
    """A start's shape. Its values (id, type, input, deadline) are judged by the orchestrator,
    which records a rejected saga for bad ones."""
    bound = _bind(args, kwargs, ("saga_id", "saga_type", "data", "deadline"))
    if isinstance(bound, str):
        saga_id = kwargs.get("saga_id") if isinstance(kwargs, Mapping) else None
        if saga_id is None and isinstance(args, list | tuple) and args:
            saga_id = args[0]
        return Malformed(f"malformed start: {bound}", plain_saga_id(saga_id))
    return StartMessage(
        bound.get("saga_id"), bound.get("saga_type"), bound.get("data"), bound.get("deadline")
    )


OUTCOME_NAMES = ("saga_id", "step", "position", "phase", "attempt", "tries")


def parse_outcome(
    args: Sequence[Any], kwargs: Mapping[str, Any], *, payload: str
) -> OutcomeMessage | Malformed:
    """A step outcome: `payload` ("result" or "error") may come first, positionally, as Celery's
    link callback passes a step's return value."""
    bound = _bind(args, kwargs, (payload, *OUTCOME_NAMES))
    if isinstance(bound, str):
        return Malformed(f"malformed step outcome: {bound}")
    saga_id = bound.get("saga_id")
    if plain_saga_id(saga_id) is None:
        return Malformed(f"malformed step outcome: saga_id {brief(saga_id)} is not a saga id")
    assert isinstance(saga_id, str)
    problem = None
    position, attempt = bound.get("position"), bound.get("attempt")
    tries = bound.get("tries", 1)
    step = bound.get("step")
    if not _is_count(position):
        problem = f"position {brief(position)} is not a non-negative integer"
    elif not _is_count(attempt):
        problem = f"attempt {brief(attempt)} is not a non-negative integer"
    elif tries is not None and not _is_count(tries):
        problem = f"tries {brief(tries)} is not a non-negative integer"
    elif bound.get("phase") not in {p.value for p in Phase}:
        problem = f"phase {brief(bound.get('phase'))} is not one of action, compensation, verify"
    elif step is not None and not (isinstance(step, str) and len(step) <= MAX_NAME_CHARS):
        problem = f"step {brief(step)} is not a step name"
    elif payload == "error" and not isinstance(bound.get("error"), dict | None):
        problem = f"error {brief(bound['error'])} is not an object"
    if problem is not None:
        return Malformed(f"malformed step outcome: {problem}", saga_id)
    assert isinstance(position, int) and isinstance(attempt, int)
    return OutcomeMessage(
        saga_id=saga_id,
        position=position,
        phase=Phase(bound["phase"]),
        attempt=attempt,
        tries=max(1, tries or 1),
        step=step,
        result=bound.get("result"),
        error=bound.get("error"),
    )


def parse_operator(args: Sequence[Any], kwargs: Mapping[str, Any]) -> OperatorMessage | Malformed:
    bound = _bind(args, kwargs, ("action", "saga_id", "step", "reason", "applied", "result"))
    if isinstance(bound, str):
        return Malformed(f"malformed operator action: {bound}")
    action, saga_id = bound.get("action"), bound.get("saga_id")
    step, reason, applied = bound.get("step"), bound.get("reason"), bound.get("applied")
    problem = None
    if action not in OPERATOR_ACTIONS:
        problem = f"action {brief(action)} is not one of {', '.join(OPERATOR_ACTIONS)}"
    elif plain_saga_id(saga_id) is None:
        problem = f"saga_id {brief(saga_id)} is not a saga id"
    elif step is not None and not (isinstance(step, str) and len(step) <= MAX_NAME_CHARS):
        problem = f"step {brief(step)} is not a step name"
    elif reason is not None and not (isinstance(reason, str) and len(reason) <= MAX_REASON_CHARS):
        problem = f"reason {brief(reason)} is not text of at most {MAX_REASON_CHARS} characters"
    elif applied is not None and not isinstance(applied, bool):
        problem = f"applied {brief(applied)} is not true or false"
    if problem is not None:
        return Malformed(f"malformed operator action: {problem}", plain_saga_id(saga_id))
    assert isinstance(action, str) and isinstance(saga_id, str)
    return OperatorMessage(
        OperatorAction(action), saga_id, step, reason, applied, bound.get("result")
    )


@dataclass(frozen=True)
class WorkerLostMessage:
    hostname: str
    pid: int
    task_ids: tuple[str, ...]


MAX_LOST_TASKS = 10_000


def parse_worker_lost(
    args: Sequence[Any], kwargs: Mapping[str, Any]
) -> WorkerLostMessage | Malformed:
    bound = _bind(args, kwargs, ("hostname", "pid", "task_ids"))
    if isinstance(bound, str):
        return Malformed(f"malformed worker_lost: {bound}")
    hostname, pid, task_ids = bound.get("hostname"), bound.get("pid"), bound.get("task_ids")
    if not isinstance(hostname, str) or not hostname or len(hostname) > MAX_TASK_ID_CHARS:
        return Malformed(f"malformed worker_lost: hostname {brief(hostname)} is not a hostname")
    if not _is_count(pid):
        return Malformed(f"malformed worker_lost: pid {brief(pid)} is not a process id")
    if not (
        isinstance(task_ids, list)
        and len(task_ids) <= MAX_LOST_TASKS
        and all(isinstance(t, str) and len(t) <= MAX_TASK_ID_CHARS for t in task_ids)
    ):
        return Malformed("malformed worker_lost: task_ids must be a list of task ids")
    assert isinstance(pid, int)
    return WorkerLostMessage(hostname, pid, tuple(task_ids))


def parse_no_arguments(
    args: Sequence[Any], kwargs: Mapping[str, Any], task: str
) -> Malformed | None:
    if args or kwargs:
        return Malformed(f"{task} takes no arguments")
    return None


def parse_published_errback(
    args: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[str, OutcomeMessage] | Malformed:
    """The errback as Celery publishes it when the failing worker could not run it inline:
    the failed task's id, then the outcome sagaflow attached."""
    if not isinstance(args, list | tuple) or len(args) != 1:
        return Malformed("malformed errback: expected the failed task's id as its one argument")
    task_id = args[0]
    if not isinstance(task_id, str) or len(task_id) > MAX_TASK_ID_CHARS:
        return Malformed(f"malformed errback: task id {brief(task_id)} is not a task id")
    outcome = parse_outcome((), kwargs, payload="error")
    if isinstance(outcome, Malformed):
        return Malformed(outcome.reason.replace("step outcome", "errback", 1), outcome.saga_id)
    return task_id, outcome


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def brief(value: object) -> str:
    """repr(value), cut to 80 characters for a reason that quotes what a message held."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
