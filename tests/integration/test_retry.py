"""Per-step retry policies, applied by the service worker with Celery's own retry."""

from __future__ import annotations

import pytest

from sagaflow import DefinitionError, Retry, SagaState, Step
from sagaflow.core.definitions import MAX_RETRY_DELAY
from sagaflow.core.machine import begin, new_saga
from sagaflow.core.vocabulary import HistoryEvent
from tests.conftest import Stack

ON_EVERY_BROKER = True  # its stack tests run on Redis, RabbitMQ and the embedded broker


def test_retry_policies_are_checked_when_defined() -> None:
    with pytest.raises(DefinitionError, match="max_attempts"):
        Retry(max_attempts=0)
    with pytest.raises(DefinitionError, match="backoff"):
        Retry(backoff=5, backoff_max=1)
    with pytest.raises(DefinitionError, match="not in broker ETAs"):
        Retry(backoff_max=3600)
    with pytest.raises(DefinitionError, match="not in broker ETAs"):
        Retry(backoff_max=MAX_RETRY_DELAY + 1)
    assert Retry(backoff_max=MAX_RETRY_DELAY).backoff_max == MAX_RETRY_DELAY  # the cap itself
    with pytest.raises(DefinitionError, match="needs a compensation"):
        Step("s", "svc.act", compensation_retry=Retry())
    assert Retry.from_json(Retry(on=("E",)).to_json()) == Retry(on=("E",))


def test_each_phase_carries_its_own_policy_in_the_context() -> None:
    steps = [Step("s", "a", "c", retry=Retry(max_attempts=5), compensation_retry=Retry(2))]
    (command,) = begin(new_saga("x", "t", {}, steps, None), None).commands  # type: ignore[arg-type]
    assert command.context["retry"]["max_attempts"] == 5  # type: ignore[union-attr]


def test_a_flaky_step_is_retried_by_celery_until_it_succeeds(stack: Stack) -> None:
    saga_id = stack.start("retrying", {"fail_times": {"b2": 2}})
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.COMPLETED
    assert stack.executions(saga_id) == [
        ("a1", "action"),
        ("b2", "action"),
        ("b2", "action"),
        ("b2", "action"),
        ("a3", "action"),
    ]
    assert saga.steps[1].attempts == 1  # one dispatch: the retries were Celery's
    completed = [h for h in stack.store.history(saga_id) if h.event == HistoryEvent.STEP_COMPLETED]
    assert completed[1].step == "b2" and completed[1].detail == {"tries": 3}


def test_retries_run_out_then_the_step_fails(stack: Stack) -> None:
    saga_id = stack.start("retrying", {"fail_times": {"b2": 5}})
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.FAILED
    assert saga.error is not None and saga.error.type == "Flaky"
    runs = stack.executions(saga_id)
    assert runs.count(("b2", "action")) == 3  # max_attempts
    failed = [h for h in stack.store.history(saga_id) if h.event == HistoryEvent.STEP_FAILED]
    assert failed[0].detail is not None and failed[0].detail["tries"] == 3


def test_a_non_retryable_error_fails_at_once(stack: Stack) -> None:
    saga_id = stack.start("retrying", {"refuse_for_good_at": ["b2"]})
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.FAILED
    assert saga.error is not None and saga.error.type == "GoodbyeForever"
    assert stack.executions(saga_id).count(("b2", "action")) == 1


def test_an_exception_the_policy_does_not_name_is_not_retried(stack: Stack) -> None:
    saga_id = stack.start("retrying", {"fail_at": ["b2"]})  # StepRefused, not Flaky
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.FAILED
    assert stack.executions(saga_id).count(("b2", "action")) == 1


def test_a_compensation_has_its_own_retry_budget(stack: Stack) -> None:
    # a1's action used none of its budget; its compensation fails twice and succeeds third.
    saga_id = stack.start("retrying", {"fail_at": ["b2"], "fail_compensation_times": {"a1": 2}})
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.FAILED
    assert stack.executions(saga_id) == [
        ("a1", "action"),
        ("b2", "action"),
        ("a1", "compensation"),
        ("a1", "compensation"),
        ("a1", "compensation"),
    ]
    compensated = [
        h for h in stack.store.history(saga_id) if h.event == HistoryEvent.STEP_COMPENSATED
    ]
    assert compensated[0].detail == {"tries": 3}


def test_retry_on_names_a_class_and_covers_its_subclasses() -> None:
    from sagaflow.service.tasks import _retry_delay

    context = {"retry": Retry(on=("ConnectionError",), jitter=False).to_json()}
    assert _retry_delay((context,), ConnectionResetError("x"), 0) == 1.0
    assert _retry_delay((context,), ValueError("x"), 0) is None
    assert _retry_delay((context,), ConnectionResetError("x"), 2) is None  # 3 runs used
    precise = {"retry": Retry(on=("builtins.ConnectionError",), jitter=False).to_json()}
    assert _retry_delay((precise,), ConnectionResetError("x"), 0) == 1.0
    elsewhere = {"retry": Retry(on=("myapp.errors.ConnectionError",), jitter=False).to_json()}
    assert _retry_delay((elsewhere,), ConnectionResetError("x"), 0) is None


def test_retry_on_a_qualified_name_retries_that_class(stack: Stack) -> None:
    saga_id = stack.start("retrying_by_qualified_name", {"fail_times": {"b2": 2}})
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.COMPLETED
    assert stack.executions(saga_id).count(("b2", "action")) == 3


def test_retry_on_a_qualified_name_of_another_module_does_not_retry(stack: Stack) -> None:
    saga_id = stack.start("retrying_by_qualified_name", {"fail_times": {"b3": 1}})
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.FAILED
    assert saga.error is not None and saga.error.type == "Flaky"
    assert saga.error.qualified_type == "tests.services.Flaky"
    assert stack.executions(saga_id).count(("b3", "action")) == 1


def test_an_error_carries_its_qualified_type_and_details_into_the_store(stack: Stack) -> None:
    saga_id = stack.start("retrying", {"decline_at": ["b2"]})
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.FAILED
    error = saga.steps[1].error
    assert error is not None and error.type == "Declined" and error.non_retryable
    assert error.qualified_type == "tests.services.Declined"
    assert error.details == {"code": "51", "step": "b2"}
    assert saga.error == error
    failed = [h for h in stack.store.history(saga_id) if h.event == HistoryEvent.STEP_FAILED]
    assert failed[0].detail is not None and failed[0].detail["error"] == error.to_json()
    assert stack.executions(saga_id).count(("b2", "action")) == 1


def test_the_backoff_doubles_with_each_retry_up_to_its_cap() -> None:
    from sagaflow.service.tasks import _retry_delay

    policy = Retry(max_attempts=20, backoff=0.5, backoff_max=5, jitter=False)
    context = {"retry": policy.to_json()}
    delays = [_retry_delay((context,), RuntimeError("x"), retries) for retries in range(7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    # With jitter, each delay is drawn between half the doubled delay and all of it.
    jittered = {"retry": Retry(max_attempts=20, backoff=0.5, backoff_max=5).to_json()}
    for retries, full in enumerate(delays):
        assert full is not None
        drawn = [_retry_delay((jittered,), RuntimeError("x"), retries) for _ in range(50)]
        assert all(d is not None and full / 2 <= d <= full for d in drawn), (retries, drawn)
        assert max(d for d in drawn if d is not None) > full * 0.75  # not stuck at the floor


def test_a_long_retry_budget_is_used_to_the_end(stack: Stack) -> None:
    """max_attempts above Celery's default max_retries (3) is honoured."""
    saga_id = stack.start("retrying_long", {"fail_times": {"b2": 5}})
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.COMPLETED
    assert stack.executions(saga_id).count(("b2", "action")) == 6
