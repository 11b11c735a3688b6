"""Saga definitions used by the integration tests (loaded by the orchestrator by module path)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from sagaflow import Retry, Saga, SagaOrchestrator, Step


def _step(name: str, queue: str, compensate: bool = True) -> Step:
    return Step(name, "svc.act", "svc.undo" if compensate else None, queue=queue)


trip = Saga(
    "trip",
    steps=[_step("a1", "svc_a"), _step("b2", "svc_b"), _step("a3", "svc_a"), _step("b4", "svc_b")],
)

# The middle step has no compensation: it is passed over when compensating.
partial = Saga(
    "partial", steps=[_step("a1", "svc_a"), _step("b2", "svc_b", False), _step("a3", "svc_a")]
)

# The second step names a task no worker has.
typo = Saga(
    "typo",
    steps=[_step("a1", "svc_a"), Step("missing", "svc.no_such_task", "svc.undo", queue="svc_b")],
)

# The second step runs on a worker without sagaflow's service support.
plain = Saga("plain", steps=[_step("a1", "svc_a"), Step("p2", "plain.fail", queue="plain")])

# Nobody consumes this queue.
orphan = Saga("orphan", steps=[_step("a1", "svc_a"), Step("lost", "svc.act", queue="nobody")])

undo_failure_too = Saga(
    "undo_failure_too",
    steps=[
        _step("a1", "svc_a"),
        Step("b2", "svc.act", "svc.undo", queue="svc_b", compensate_on_failure=True),
    ],
)


class Dynamic(SagaOrchestrator):
    """As many steps as the input asks for, alternating between the two services."""

    saga_type = "dynamic"

    def validate_input(self, data: Mapping[str, Any]) -> None:
        if not isinstance(data.get("n"), int) or not 1 <= data["n"] <= 20:
            raise ValueError("n must be an integer from 1 to 20")

    def define_steps(self, data: Mapping[str, Any]) -> list[Step]:
        return [_step(f"s{i}", "svc_a" if i % 2 else "svc_b") for i in range(1, data["n"] + 1)]


class Broken(SagaOrchestrator):
    """A definition with a bug: define_steps raises on input it did not expect."""

    saga_type = "broken"

    def define_steps(self, data: Mapping[str, Any]) -> list[Step]:
        return [_step(f"item{i}", "svc_a") for i in data["items"]]


# The middle step's queue gets a worker only when a test starts one (and kills it).
mortal = Saga("mortal", steps=[_step("a1", "svc_a"), _step("m2", "mortal"), _step("a3", "svc_a")])

# The middle step goes to a queue that gets a worker only when a test starts one.
detour = Saga("detour", steps=[_step("a1", "svc_a"), _step("l2", "later"), _step("a3", "svc_a")])

_quick = Retry(max_attempts=3, backoff=0.05, backoff_max=0.2, jitter=False, on=("Flaky",))

# b2 retries Flaky failures up to 3 runs; a1's compensation has its own budget of 3 runs.
retrying = Saga(
    "retrying",
    steps=[
        Step("a1", "svc.act", "svc.undo", queue="svc_a", compensation_retry=_quick),
        Step("b2", "svc.act", "svc.undo", queue="svc_b", retry=_quick),
        _step("a3", "svc_a"),
    ],
)

# The middle step goes where nobody listens and times out; its compensation can run.
timing_out = Saga(
    "timing_out",
    steps=[
        _step("a1", "svc_a"),
        Step(
            "slow", "svc.act", "svc.undo", queue="nobody", compensation_queue="svc_b", timeout=0.3
        ),
        _step("a3", "svc_a"),
    ],
)
timing_out_fail = Saga(
    "timing_out_fail",
    steps=[
        _step("a1", "svc_a"),
        Step(
            "slow",
            "svc.act",
            "svc.undo",
            queue="nobody",
            compensation_queue="svc_b",
            timeout=0.3,
            on_timeout="fail",
        ),
    ],
)

# b2 retries Flaky named by its module; b3 names a Flaky of another module, so it does not retry.
retrying_by_qualified_name = Saga(
    "retrying_by_qualified_name",
    steps=[
        Step("b2", "svc.act", queue="svc_b", retry=replace(_quick, on=("tests.services.Flaky",))),
        Step("b3", "svc.act", queue="svc_b", retry=replace(_quick, on=("elsewhere.Flaky",))),
    ],
)

retrying_long = Saga(
    "retrying_long",
    steps=[
        _step("a1", "svc_a"),
        Step(
            "b2",
            "svc.act",
            "svc.undo",
            queue="svc_b",
            retry=Retry(max_attempts=6, backoff=0.02, backoff_max=0.05, jitter=False),
        ),
    ],
)

# The saga pattern's three kinds of step: a1 can be undone, p2 is the point of no return, r3 is
# retried until it succeeds.
pivoting = Saga(
    "pivoting",
    steps=[
        _step("a1", "svc_a"),
        Step("p2", "svc.act", queue="svc_b", pivot=True),
        Step("r3", "svc.act", queue="svc_a", retriable=True),
    ],
)


def _unsure(saga_type: str, on_timeout: str) -> Saga:
    """b2 may time out (when asked to be slow) with its effect in place or not. Its queue gets a
    threads worker from the tests, so its verify task runs while a slow action still sleeps."""
    verify = "svc.check" if on_timeout == "verify" else None
    return Saga(
        saga_type,
        steps=[
            _step("a1", "svc_a"),
            Step(
                "b2",
                "svc.act",
                "svc.undo",
                queue="unsure",
                compensation_queue="svc_b",
                timeout=0.5,
                on_timeout=on_timeout,
                verify=verify,
            ),
            _step("a3", "svc_a"),
        ],
    )


verifying = _unsure("verifying", "verify")
escalating = _unsure("escalating", "escalate")

# Stopped by its deadline while b2 waits where nobody listens; b2 then times out and is undone.
hurried = Saga(
    "hurried",
    steps=[
        _step("a1", "svc_a"),
        Step("b2", "svc.act", "svc.undo", queue="nobody", compensation_queue="svc_b", timeout=1.5),
        _step("a3", "svc_a"),
    ],
    deadline=0.3,
)


def _hosted(name: str, prefix: str, queue: str) -> Saga:
    """Steps on an existing Celery app (tests.host_plain, tests.host_django): h1 retries
    Flaky failures up to 3 runs, a2 runs on a sagaflow service app between them."""
    return Saga(
        name,
        steps=[
            Step("h1", f"{prefix}.act", f"{prefix}.undo", queue=queue, retry=_quick),
            _step("a2", "svc_a"),
            Step("h3", f"{prefix}.act", f"{prefix}.undo", queue=queue),
        ],
    )


hosted = _hosted("hosted", "host", "host")
hosted_django = _hosted("hosted_django", "hostd", "hostd")
