"""Flower against real workers: every task of a saga can be found by the saga id."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from sagaflow import SagaState
from tests.conftest import ROOT, Stack, free_port, poll

USER, PASSWORD = "operator", "flower-test-password"


def get(url: str, auth: bool = True) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


@pytest.fixture
def flower(stack: Stack) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "sagaflow.worker",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            f"--basic-auth={USER}:{PASSWORD}",
        ],
        cwd=ROOT,
        env=stack.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        poll(
            lambda: get(f"{base}/healthcheck", auth=False)[0] == 200,
            60,
            lambda: "Flower never answered /healthcheck",
        )
        # Flower sees events from the moment it connects: wait until it knows the workers.
        poll(
            lambda: len(json.loads(get(f"{base}/api/workers?refresh=1")[1] or "{}")) >= 3,
            60,
            lambda: "Flower never listed the workers",
        )
        # The orchestrator sends task events only when asked. Flower asks every 5 s; asking
        # now, as Flower would, keeps the test from racing Flower's timer. A busy machine can
        # miss the 1 s reply window, so ask until the orchestrator itself has answered.
        answers: list[str] = []

        def orchestrator_enabled_events() -> bool:
            enabled = stack.celery("control", "enable_events")
            answers.append(enabled.stdout + enabled.stderr)
            return "orchestrator@" in enabled.stdout

        poll(
            orchestrator_enabled_events,
            60,
            lambda: f"the orchestrator never answered enable_events; last answer: {answers[-1:]}",
        )
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_flower_finds_every_task_of_a_saga_by_its_id(stack: Stack, flower: str) -> None:
    saga_id = stack.start("trip", {"fail_at": ["a3"]})
    saga = stack.wait_one(saga_id)
    assert saga.state is SagaState.FAILED
    step_task_ids = {s.task_id for s in saga.steps if s.task_id} | {
        s.compensation_task_id for s in saga.steps if s.compensation_task_id
    }

    def found() -> dict[str, Any]:
        status, body = get(f"{flower}/api/tasks?search={saga_id}&limit=100")
        tasks: dict[str, Any] = json.loads(body) if status == 200 and body else {}
        return tasks if step_task_ids <= set(tasks) else {}

    tasks = poll(found, 30, lambda: f"Flower does not list all of {sorted(step_task_ids)}")
    names = {t["name"] for t in tasks.values()}
    # The step tasks and the orchestrator's own tasks (their events enabled, as Flower does)
    # all carry the saga id.
    assert {"svc.act", "svc.undo", "sagaflow.start", "sagaflow.step_succeeded"} <= names
    assert "sagaflow.step_failed" in names


def test_flower_requires_credentials_but_metrics_do_not(stack: Stack, flower: str) -> None:
    assert get(f"{flower}/api/workers", auth=False)[0] == 401
    status, body = get(f"{flower}/metrics", auth=False)  # why the docs say: keep it private
    assert status == 200 and "flower_events_total" in body
