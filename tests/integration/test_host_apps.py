"""Saga steps on Celery apps their own projects configured: every guarantee, or a refusal.

tests.host_plain is a plain app (pickle first, prefetch 4, early acks, its own routes);
tests.host_django reads CELERY_* settings from a settings module. Both only called
`install_service_support`. Each runs as a real prefork worker beside the stack's own.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from sagaflow import SagaState, install_service_support
from sagaflow.core.vocabulary import HistoryEvent
from sagaflow.devstack.processes import WorkerGroup, WorkerSpec
from sagaflow.errors import ConfigurationError
from tests.conftest import ROOT, Stack

POSTGRES_STACK = pytest.mark.parametrize("stack", ["redis-postgres"], indirect=True)
HOSTS = {"hosted": ("tests.host_plain", "host"), "hosted_django": ("tests.host_django", "hostd")}


@pytest.fixture(params=sorted(HOSTS))
def hosted(request: pytest.FixtureRequest, stack: Stack, tmp_path: Path) -> Iterator[str]:
    """The saga type whose h1 and h3 run on one of the host apps, with its worker running."""
    module, queue = HOSTS[request.param]
    # Celery refuses to run a pickle-accepting worker as root unless told to.
    group = WorkerGroup({**stack.env, "C_FORCE_ROOT": "1"}, tmp_path / "logs", cwd=ROOT)
    try:
        group.start(WorkerSpec(f"{queue}-worker", module, [queue], pool="prefork", concurrency=2))
        # The worker answers pings in its own serializer, pickle: ask as the project would.
        ping = Celery("ping", broker=stack.settings.broker_url, set_as_current=False)
        ping.conf.accept_content = ["pickle", "json"]
        group.wait_ready(ping, timeout=60)
        yield request.param
    finally:
        group.stop()


@POSTGRES_STACK
def test_a_step_retries_by_its_policy_on_a_host_app(stack: Stack, hosted: str) -> None:
    saga = stack.wait_one(stack.start(hosted, {"fail_times": {"h1": 2}}), timeout=90)
    assert saga.state is SagaState.COMPLETED, saga
    runs = [e for e in stack.executions(saga.saga_id) if e[0] == "h1"]
    assert runs == [("h1", "action")] * 3
    assert saga.steps[0].attempts == 1  # one dispatch: the retries were Celery's
    history = stack.store.history(saga.saga_id)
    completed = [h for h in history if h.event == HistoryEvent.STEP_COMPLETED]
    assert completed[0].step == "h1" and completed[0].detail == {"tries": 3}


@POSTGRES_STACK
def test_a_failure_on_a_pickle_app_reaches_the_orchestrator(stack: Stack, hosted: str) -> None:
    saga = stack.wait_one(stack.start(hosted, {"fail_at": ["h3"]}), timeout=90)
    assert saga.state is SagaState.FAILED, saga
    assert saga.steps[2].error is not None and "StepRefused" in saga.steps[2].error.type
    assert stack.executions(saga.saga_id) == [
        ("h1", "action"),
        ("a2", "action"),
        ("h3", "action"),
        ("a2", "compensation"),
        ("h1", "compensation"),
    ]


@POSTGRES_STACK
def test_a_step_killed_mid_run_on_a_host_app_runs_again(stack: Stack, hosted: str) -> None:
    """The host app acknowledges early; its saga steps are acknowledged late all the same."""
    saga = stack.wait_one(stack.start(hosted, {"crash_once": "h1"}), timeout=120)
    assert saga.state is SagaState.COMPLETED, saga
    assert [e for e in stack.executions(saga.saga_id) if e[0] == "h1"] == [("h1", "action")] * 2
    assert saga.steps[0].attempts == 1  # redelivered, not dispatched again


@POSTGRES_STACK
def test_a_result_kombu_cannot_encode_is_made_json_on_a_host_app(stack: Stack, hosted: str) -> None:
    saga = stack.wait_one(stack.start(hosted, {"unencodable_result": True}), timeout=90)
    assert saga.state is SagaState.COMPLETED, saga
    assert isinstance(saga.steps[0].result, dict)


def test_the_host_app_keeps_its_settings_and_its_own_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGAFLOW_BROKER_URL", "memory://")
    monkeypatch.setenv("SAGAFLOW_QUEUE", "sagaflow")
    host = importlib.import_module("tests.host_plain")
    app: Celery = host.app
    assert app.conf.task_serializer == "pickle" and app.conf.task_acks_late is False
    assert app.conf.worker_prefetch_multiplier == 4
    assert app.conf.task_routes == {"shop.*": {"queue": "shop"}}
    own = app.tasks["shop.own"]
    assert own.acks_late is False and own.reject_on_worker_lost is not True
    assert own({"id": 1}) == "done {'id': 1}"  # a call outside a saga is the task's own


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"accept_content": ["pickle"]}, "accept_content"),
        ({"task_always_eager": True}, "task_always_eager"),
    ],
)
def test_settings_steps_cannot_work_under_are_refused_at_install(
    settings: dict[str, object], named: str
) -> None:
    app = Celery("refused", broker="memory://", set_as_current=False)
    app.conf.update(settings)
    with pytest.raises(ConfigurationError, match=named):
        install_service_support(app, "sagaflow")


@POSTGRES_STACK
def test_a_worker_whose_settings_refuse_json_does_not_start(stack: Stack) -> None:
    """Read from a Django-style settings module: the worker stops at once and says why."""
    env = {**stack.env, "HOST_ACCEPT_CONTENT": "pickle", "C_FORCE_ROOT": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.host_django", "worker", "-Q", "hostd"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "accept_content" in output and "add 'json' to accept_content" in output, output
    assert os.environ.get("HOST_ACCEPT_CONTENT") is None
