"""Saga definitions: pure data, no I/O, no Celery, no SQL.

A definition names Celery tasks by string, so the orchestrator and producers never import the
services' code. Two forms register in one `Registry`: the declarative `Saga` and the
`SagaOrchestrator` subclass whose steps may depend on the saga's input.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from sagaflow.core.protocol import qualified_name
from sagaflow.core.search import check_keys
from sagaflow.core.vocabulary import OnTimeout
from sagaflow.core.vocabulary import Phase as Phase
from sagaflow.core.vocabulary import SagaState as SagaState
from sagaflow.core.vocabulary import StepStatus as StepStatus
from sagaflow.errors import DefinitionError, InvalidSagaInput, UnknownSagaType

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,199}$")


# What a step that timed out (its outcome unknown: it may have half-happened) leads to; see
# OnTimeout and Step. The names, as `Step(on_timeout=...)` takes them.
OnTimeoutName = Literal["compensate", "fail", "verify", "escalate"]
ON_TIMEOUT = tuple(policy.value for policy in OnTimeout)
MAX_RETRY_DELAY = 600.0  # retries wait in broker ETAs: keep them far below visibility_timeout


@dataclass(frozen=True)
class Retry:
    """How a step's task retries before its failure counts, with Celery's own `self.retry()`.

    `max_attempts` counts every run (3 = the first run and up to 2 retries). The delay starts at
    `backoff` seconds and doubles up to `backoff_max`; with `jitter` each delay is drawn between
    half and all of it. `on` names the exception classes that retry, a subclass included: by
    class name as a service raises them ("PaymentDeclined": any class of that name), or by
    qualified name ("myapp.errors.PaymentDeclined": only that module's class). Empty: any.
    `sagaflow.NonRetryable` never retries.
    """

    max_attempts: int = 3
    backoff: float = 1.0
    backoff_max: float = 60.0
    jitter: bool = True
    on: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise DefinitionError(
                f"Retry.max_attempts must be an integer >= 1, got {self.max_attempts!r}"
            )
        if self.backoff < 0 or self.backoff_max < self.backoff:
            raise DefinitionError("Retry needs 0 <= backoff <= backoff_max")
        if self.backoff_max > MAX_RETRY_DELAY:
            raise DefinitionError(
                f"Retry.backoff_max is at most {MAX_RETRY_DELAY:g}s: longer waits belong in "
                "the store, not in broker ETAs"
            )
        object.__setattr__(self, "on", tuple(self.on))
        if not all(isinstance(name, str) and name for name in self.on):
            raise DefinitionError("Retry.on names exception classes by their name (strings)")

    def covers(self, error: type[BaseException]) -> bool:
        """Whether `on` names this exception class or one of its bases (empty `on`: any)."""
        if not self.on:
            return True
        names = set(self.on)
        return any(cls.__name__ in names or qualified_name(cls) in names for cls in error.__mro__)

    def to_json(self) -> dict[str, Any]:
        return {
            "max_attempts": self.max_attempts,
            "backoff": self.backoff,
            "backoff_max": self.backoff_max,
            "jitter": self.jitter,
            "on": list(self.on),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Retry | None:
        if not data:
            return None
        return cls(
            max_attempts=int(data["max_attempts"]),
            backoff=float(data["backoff"]),
            backoff_max=float(data["backoff_max"]),
            jitter=bool(data["jitter"]),
            on=tuple(data.get("on") or ()),
        )


@dataclass(frozen=True)
class Step:
    """One step of a saga.

    `action` and `compensation` are Celery task names. `queue` routes both to the service's
    workers unless `compensation_queue` says otherwise. A failed step is not compensated (its
    action is assumed not to have taken effect) unless `compensate_on_failure` is set. `retry`
    and `compensation_retry` are separate budgets: a compensation never inherits the retries
    its action used up. `timeout` (seconds) fails an action that reported no outcome in time;
    `on_timeout` says whether that step is then compensated too (its outcome is unknown).

    With `on_timeout="verify"` the `verify` task (on the step's queue, given the step's context
    and its idempotency key) answers `{"applied": true|false, "result": ...}`: applied, the step
    counts as completed with that result; not applied, as failed without effect (a retriable
    step is sent again). A verify task that fails or answers anything else escalates: the saga
    stops `escalated` until `sagaflow resolve` says what happened.

    `pivot` marks the point of no return: once it succeeded the saga can only go forward, so
    it has no compensation and every step after it is `retriable`: sent again (same
    idempotency key) until it succeeds, never compensated. A failed pivot compensates the
    steps before it as any failed step does.
    """

    name: str
    action: str
    compensation: str | None = None
    queue: str | None = None
    compensation_queue: str | None = None
    compensate_on_failure: bool = False
    retry: Retry | None = None
    compensation_retry: Retry | None = None
    timeout: float | None = None
    # Given as an OnTimeout or its name; stored as an OnTimeout (None: no timeout).
    on_timeout: OnTimeout | OnTimeoutName | None = None
    pivot: bool = False
    retriable: bool = False
    verify: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise DefinitionError(
                f"step name {self.name!r} is invalid: use letters, digits, '_', '.', '-'"
            )
        self._check_tasks_and_queues()
        for label, policy in (
            ("retry", self.retry),
            ("compensation_retry", self.compensation_retry),
        ):
            if policy is not None and not isinstance(policy, Retry):
                raise DefinitionError(f"step {self.name!r}: {label} must be a Retry")
        if self.compensation_retry is not None and self.compensation is None:
            raise DefinitionError(f"step {self.name!r}: compensation_retry needs a compensation")
        self._check_timeout()
        if self.compensate_on_failure and self.compensation is None:
            raise DefinitionError(
                f"step {self.name!r}: compensate_on_failure needs a compensation task"
            )
        self._check_point_of_no_return()

    def _check_tasks_and_queues(self) -> None:
        for label, value in (("action", self.action), ("compensation", self.compensation)):
            if label == "compensation" and value is None:
                continue
            if not isinstance(value, str) or not value.strip():
                raise DefinitionError(
                    f"step {self.name!r}: {label} must be a Celery task name (a non-empty "
                    f"string), got {value!r}"
                )
        for label, value in (
            ("queue", self.queue),
            ("compensation_queue", self.compensation_queue),
        ):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise DefinitionError(f"step {self.name!r}: {label} must be a non-empty string")

    def _check_timeout(self) -> None:
        """The timeout and what follows it; `on_timeout` is stored as an OnTimeout."""
        if self.timeout is not None and (
            not isinstance(self.timeout, int | float) or self.timeout <= 0
        ):
            raise DefinitionError(
                f"step {self.name!r}: timeout must be a positive number of seconds"
            )
        policy = self.on_timeout
        if policy is None and self.timeout is not None:
            # A step that timed out may have half-happened: undo it when we know how. A pivot
            # cannot be undone and may have happened: only an operator can say.
            policy = OnTimeout.COMPENSATE if self.compensation else OnTimeout.FAIL
            if self.pivot:
                policy = OnTimeout.VERIFY if self.verify else OnTimeout.ESCALATE
        if policy is not None:
            if policy not in ON_TIMEOUT:
                raise DefinitionError(
                    f"step {self.name!r}: on_timeout must be one of {', '.join(ON_TIMEOUT)}"
                )
            policy = OnTimeout(policy)
            object.__setattr__(self, "on_timeout", policy)
        if policy is OnTimeout.COMPENSATE and self.compensation is None:
            raise DefinitionError(
                f"step {self.name!r}: on_timeout='compensate' needs a compensation"
            )
        if policy in (OnTimeout.VERIFY, OnTimeout.ESCALATE) and self.timeout is None:
            raise DefinitionError(
                f"step {self.name!r}: on_timeout={policy.value!r} needs a timeout (the "
                "policy applies when the step times out)"
            )
        if policy is OnTimeout.VERIFY and self.verify is None:
            raise DefinitionError(
                f"step {self.name!r}: on_timeout='verify' needs verify='<task name>', the task "
                "that reports whether the action took effect"
            )
        if self.verify is not None and (
            not isinstance(self.verify, str) or not self.verify.strip()
        ):
            raise DefinitionError(f"step {self.name!r}: verify must be a Celery task name")
        if self.verify is not None and policy is not OnTimeout.VERIFY:
            raise DefinitionError(
                f"step {self.name!r}: verify is used only with on_timeout='verify'"
            )

    def _check_point_of_no_return(self) -> None:
        if self.pivot and self.retriable:
            raise DefinitionError(f"step {self.name!r} cannot be both the pivot and retriable")
        if self.pivot and self.compensation is not None:
            raise DefinitionError(
                f"step {self.name!r} is the pivot: it is never undone once it succeeded, so it "
                "takes no compensation"
            )
        if self.retriable and self.compensation is not None:
            raise DefinitionError(
                f"step {self.name!r} is retriable: it is retried until it succeeds and never "
                "compensated, so it takes no compensation"
            )


def validate_steps(saga_type: str, steps: Sequence[Step]) -> tuple[Step, ...]:
    """Check a step list and return it as a tuple; raise DefinitionError with the reason."""
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
        raise DefinitionError(f"saga {saga_type!r}: steps must be a list of Step")
    result = tuple(steps)
    if not result:
        raise DefinitionError(f"saga {saga_type!r} has no steps")
    seen: set[str] = set()
    for step in result:
        if not isinstance(step, Step):
            raise DefinitionError(f"saga {saga_type!r}: {step!r} is not a Step")
        if step.name in seen:
            raise DefinitionError(f"saga {saga_type!r}: step name {step.name!r} is used twice")
        seen.add(step.name)
    _check_pivot_order(saga_type, result)
    return result


def _check_pivot_order(saga_type: str, steps: tuple[Step, ...]) -> None:
    """Compensatable steps, then at most one pivot, then retriable steps only.

    Without a pivot, retriable steps may still end the saga: once the first of them is sent the
    saga can only go forward, as after a pivot.
    """
    pivots = [s.name for s in steps if s.pivot]
    if len(pivots) > 1:
        raise DefinitionError(
            f"saga {saga_type!r} has {len(pivots)} pivot steps ({', '.join(pivots)}): at most one"
        )
    pivot = next((i for i, s in enumerate(steps) if s.pivot), None)
    if pivot is not None:
        for step in steps[pivot + 1 :]:
            if not step.retriable:
                raise DefinitionError(
                    f"saga {saga_type!r}: step {step.name!r} comes after the pivot "
                    f"{steps[pivot].name!r} and must be retriable (the saga cannot go back)"
                )
    first_retriable = next((i for i, s in enumerate(steps) if s.retriable), None)
    if first_retriable is None:
        return
    if pivot is not None and first_retriable < pivot:
        raise DefinitionError(
            f"saga {saga_type!r}: retriable step {steps[first_retriable].name!r} comes before "
            f"the pivot {steps[pivot].name!r}; retriable steps follow it"
        )
    for step in steps[first_retriable + 1 :]:
        if not step.retriable:
            raise DefinitionError(
                f"saga {saga_type!r}: step {step.name!r} comes after the retriable step "
                f"{steps[first_retriable].name!r} and must be retriable too (retriable steps "
                "are never compensated, so nothing after them could be undone)"
            )


def _check_saga_type(saga_type: object) -> str:
    if not isinstance(saga_type, str) or not _NAME.match(saga_type):
        raise DefinitionError(
            f"saga type {saga_type!r} is invalid: use letters, digits, '_', '.', '-'"
        )
    return saga_type


def check_deadline(label: str, seconds: object) -> float | None:
    """A deadline is a positive number of seconds, or None."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise DefinitionError(f"{label} must be a positive number of seconds, got {seconds!r}")
    if seconds > 10 * 365 * 86400:
        raise DefinitionError(f"{label} must be at most ten years, got {seconds!r}")
    return float(seconds)


InputValidator = Callable[[Mapping[str, Any]], None]


@dataclass(frozen=True)
class Saga:
    """A declarative saga: a type name and a fixed list of steps.

    `validate`, if given, is called with the input before the saga starts; raising ValueError
    or InvalidSagaInput rejects the saga with that message recorded. `deadline` (seconds from
    the start) stops a saga still running forward by then and compensates what it did; it
    ends `failed` with a DeadlineExceeded error. A saga past its pivot is let finish. `keys`
    names the input fields a saga is about ("order_id", nested with dots): `sagaflow list`
    and the dashboard show them as columns, and `--where` searches any input field.
    """

    saga_type: str
    steps: Sequence[Step] = field(default_factory=tuple)
    validate: InputValidator | None = None
    deadline: float | None = None
    keys: Sequence[str] = ()

    def __post_init__(self) -> None:
        _check_saga_type(self.saga_type)
        object.__setattr__(self, "steps", validate_steps(self.saga_type, self.steps))
        check_deadline(f"saga {self.saga_type!r}: deadline", self.deadline)
        object.__setattr__(self, "keys", check_keys(f"saga {self.saga_type!r}", self.keys))

    def define_steps(self, data: Mapping[str, Any]) -> list[Step]:
        return list(self.steps)

    def validate_input(self, data: Mapping[str, Any]) -> None:
        if self.validate is not None:
            self.validate(data)


class SagaOrchestrator:
    """The subclassing form: set `saga_type` and implement `define_steps(data)`.

    The steps are computed once, when the saga starts, and recorded with it: later changes to
    the definition never alter a saga already running.
    """

    saga_type: ClassVar[str]
    deadline: ClassVar[float | None] = None  # as Saga.deadline
    keys: ClassVar[tuple[str, ...]] = ()  # as Saga.keys

    def define_steps(self, data: Mapping[str, Any]) -> list[Step]:
        raise NotImplementedError

    def validate_input(self, data: Mapping[str, Any]) -> None:
        """Override to reject bad input: raise ValueError or InvalidSagaInput."""


Definition = Saga | SagaOrchestrator


class Registry:
    """Saga definitions keyed by saga type."""

    def __init__(self, definitions: Iterable[Definition | type[SagaOrchestrator]] = ()) -> None:
        self._definitions: dict[str, Definition] = {}
        for definition in definitions:
            self.register(definition)

    def register(self, definition: Definition | type[SagaOrchestrator]) -> Definition:
        if isinstance(definition, type) and issubclass(definition, SagaOrchestrator):
            definition = definition()
        if not isinstance(definition, (Saga, SagaOrchestrator)):
            raise DefinitionError(f"{definition!r} is neither a Saga nor a SagaOrchestrator")
        saga_type = _check_saga_type(getattr(definition, "saga_type", None))
        existing = self._definitions.get(saga_type)
        if existing is not None and (
            isinstance(existing, SagaOrchestrator) and type(existing) is type(definition)
        ):
            return existing  # the same orchestrator class, loaded again
        if existing is not None and existing is not definition:
            raise DefinitionError(f"saga type {saga_type!r} is registered twice")
        check_deadline(f"saga {saga_type!r}: deadline", getattr(definition, "deadline", None))
        check_keys(f"saga {saga_type!r}", getattr(definition, "keys", ()))
        self._definitions[saga_type] = definition
        return definition

    def get(self, saga_type: str) -> Definition:
        try:
            return self._definitions[saga_type]
        except KeyError:
            known = ", ".join(sorted(self._definitions)) or "none"
            raise UnknownSagaType(
                f"unknown saga type {saga_type!r} (registered: {known})"
            ) from None

    def plan(self, saga_type: str, data: object) -> tuple[Step, ...]:
        """Validate the input and compute the steps a new saga of this type will run."""
        definition = self.get(saga_type)
        if not isinstance(data, Mapping):
            raise InvalidSagaInput(f"saga input must be a JSON object, got {type(data).__name__}")
        try:
            definition.validate_input(data)
        except (ValueError, InvalidSagaInput) as exc:
            raise InvalidSagaInput(f"invalid input for saga {saga_type!r}: {exc}") from exc
        return validate_steps(saga_type, definition.define_steps(data))

    def deadline(self, saga_type: str) -> float | None:
        """Seconds a saga of this type may run before it is stopped (None: no deadline)."""
        return check_deadline("deadline", getattr(self.get(saga_type), "deadline", None))

    def keys_of(self, saga_type: str) -> tuple[str, ...]:
        """The input fields sagas of this type are about; none for a type not registered."""
        definition = self._definitions.get(saga_type)
        return tuple(getattr(definition, "keys", ())) if definition is not None else ()

    def keys_of_all(self, saga_types: Iterable[str]) -> list[str]:
        """The key fields of these types, each once, in order of first appearance."""
        keys: dict[str, None] = {}
        for saga_type in saga_types:
            keys.update(dict.fromkeys(self.keys_of(saga_type)))
        return list(keys)

    def __contains__(self, saga_type: object) -> bool:
        return saga_type in self._definitions

    def __len__(self) -> int:
        return len(self._definitions)

    @property
    def saga_types(self) -> list[str]:
        return sorted(self._definitions)


def load_definitions(module_paths: str | Iterable[str]) -> Registry:
    """Import each module and register every Saga and SagaOrchestrator subclass it defines."""
    if isinstance(module_paths, str):
        module_paths = [module_paths]
    registry = Registry()
    for path in module_paths:
        try:
            module = importlib.import_module(path)
        except ImportError as exc:
            raise DefinitionError(f"cannot import saga definitions module {path!r}: {exc}") from exc
        for value in vars(module).values():
            if isinstance(value, Saga) or (
                inspect.isclass(value)
                and issubclass(value, SagaOrchestrator)
                and value is not SagaOrchestrator
                and value.__module__ == module.__name__
                and "saga_type" in vars(value)
            ):
                registry.register(value)
    return registry
