"""Worker logs that name the saga: with SAGAFLOW_LOG_FORMAT=json, real orchestrator and service
worker processes write JSON lines, and the lines about a saga's tasks carry its id, type, step
and phase (sagaflow.logs)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from sagaflow import SagaState
from sagaflow.client.saga_client import SagaClient
from sagaflow.config import Settings, ensure_home
from sagaflow.devstack.processes import WorkerGroup, WorkerProcess, WorkerSpec
from sagaflow.errors import ConfigurationError
from sagaflow.logs import JsonFormatter, SagaFields, fields_of_task, saga_logged
from tests.conftest import ROOT, service_env


def json_lines(worker: WorkerProcess) -> list[dict[str, Any]]:
    lines = []
    for line in worker.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))  # every line that looks like JSON is JSON
    return lines


def test_json_worker_logs_name_the_saga_of_each_task(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home, definitions=("tests.sagas",), log_format="json")
    ensure_home(settings)
    client = SagaClient(settings)
    client.store.upgrade()
    env = service_env(settings, f"sqlite:///{tmp_path / 'effects.db'}")
    try:
        with WorkerGroup(env, home / "logs", cwd=ROOT) as group:
            orchestrator = group.start(WorkerSpec("orchestrator", "sagaflow.worker", ["sagaflow"]))
            service = group.start(WorkerSpec("svc", "tests.services", ["svc_a", "svc_b"]))
            group.wait_ready(client.app)
            saga_id = client.start("trip", {"fail_at": ["a3"]})
            assert client.wait(saga_id, timeout=60).state is SagaState.FAILED
            group.stop()
        steps = [line for line in json_lines(service) if line.get("saga_id") == saga_id]
        # Celery's own line for each step task, with the saga's fields and the task's id
        done = {(line["step"], line["phase"]) for line in steps if "succeeded" in line["message"]}
        assert {("a1", "action"), ("b2", "action"), ("b2", "compensation")} <= done, steps
        assert all(line["saga_type"] == "trip" and line.get("task_id") for line in steps), steps
        failed = [line for line in steps if line["step"] == "a3" and line["level"] == "ERROR"]
        assert failed and "StepRefused" in failed[0].get("traceback", failed[0]["message"])
        outcomes = [line for line in json_lines(orchestrator) if line.get("saga_id") == saga_id]
        assert {line.get("step") for line in outcomes} >= {"a1", "b2", "a3"}, outcomes
        assert all({"time", "level", "logger", "message"} <= set(line) for line in outcomes)
    finally:
        client.close()


def test_fields_come_from_the_message_and_nothing_breaks_on_a_malformed_one() -> None:
    class Request:
        callbacks = [
            {"task": "sagaflow.step_succeeded", "kwargs": {"saga_id": "s", "phase": "action"}}
        ]

    context = {"saga_id": "s", "saga_type": "trip", "step": "a1", "data": {}}
    assert fields_of_task(Request(), [context], {}) == {
        "saga_id": "s",
        "saga_type": "trip",
        "step": "a1",
        "phase": "action",
    }
    assert fields_of_task(None, (), {"saga_id": "s", "step": "b2", "phase": "compensation"}) == {
        "saga_id": "s",
        "step": "b2",
        "phase": "compensation",
    }
    for hostile in ([{"saga_id": 5}], ["x"], None, [{"saga_id": ["s"]}]):
        assert fields_of_task(object(), hostile, {"saga_id": {"a": 1}}) == {}


def test_a_record_outside_a_saga_has_empty_fields_and_json_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    SagaFields().filter(record)
    assert record.saga_id is None  # type: ignore[attr-defined]
    with saga_logged(saga_id="s-1", step="a1"):
        inside = logging.LogRecord("x", logging.INFO, __file__, 1, "in", (), None)
        SagaFields().filter(inside)
    entry = json.loads(JsonFormatter().format(inside))
    assert entry["saga_id"] == "s-1" and entry["step"] == "a1" and entry["message"] == "in"
    assert "saga_id" not in json.loads(JsonFormatter().format(record))


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="SAGAFLOW_LOG_FORMAT must be one of text, json"):
        Settings.from_env({"SAGAFLOW_LOG_FORMAT": "xml"})
