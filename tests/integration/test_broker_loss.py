"""A broker outage while a step runs: its work is done, its report must still arrive as a success.

Runs against a redis-server of its own (started and killed here), never the shared one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.chaos_cluster import RedisServer
from sagaflow import SagaState
from sagaflow.client.saga_client import SagaClient
from sagaflow.config import Settings, ensure_home
from sagaflow.devstack.processes import WorkerGroup, WorkerSpec
from sagaflow.store.factory import open_store
from tests.conftest import (
    ROOT,
    Stack,
    create_postgres_database,
    drop_postgres_database,
    poll,
    service_env,
)

# Longer than Celery's own retries of a callback publish (3 tries within about a second).
OUTAGE_SECONDS = 4.0


def test_step_finishing_while_redis_is_down_still_reports_success(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    pg_url = create_postgres_database()
    settings = Settings(
        home=tmp_path, broker_url=redis.url, database_url=pg_url, definitions=("tests.sagas",)
    )
    ensure_home(settings)
    store = open_store(pg_url)
    store.upgrade()
    env = service_env(settings, pg_url)
    group = WorkerGroup(env, tmp_path / "logs", cwd=ROOT)
    client = SagaClient(settings, store=store)
    stack = Stack("own-redis", settings, env, group, client, store, pg_url)
    try:
        queue = settings.queue
        group.start(WorkerSpec("orchestrator", "sagaflow.worker", [queue], pool="threads"))
        group.start(WorkerSpec("svc_a", "tests.services", ["svc_a"], pool="prefork", concurrency=1))
        group.start(WorkerSpec("svc_b", "tests.services", ["svc_b"], pool="prefork", concurrency=1))
        group.wait_ready(client.app, timeout=60)
        # The last step records its effect, then takes a second before returning.
        saga_id = stack.start("trip", {"slow_after_effect": {"b4": 1}})
        poll(
            lambda: ("b4", "action") in stack.executions(saga_id),
            60,
            lambda: f"b4 never ran: {stack.executions(saga_id)}{stack.logs_hint()}",
        )
        redis.stop()
        # The outage itself (not a wait for work): b4 returns and publishes its callback now.
        time.sleep(OUTAGE_SECONDS)
        redis.start()
        saga = stack.wait_one(saga_id, timeout=60)
        assert saga.state is SagaState.COMPLETED, (saga.state, saga.error, stack.logs_hint())
        assert stack.executions(saga_id).count(("b4", "action")) == 1
    finally:
        leaders = [w.process.pid for w in group.workers]
        group.stop()
        for pid in leaders:
            # A worker whose leader died in the outage may have left its pool running.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        client.close()
        store.dispose()
        redis.stop()
        drop_postgres_database(pg_url)


def test_workers_survive_redis_restarts_with_tasks_in_flight(tmp_path: Path) -> None:
    """kombu's Redis channel failed with an AttributeError when it closed (or acked) after its
    connection was gone, and Celery took that as fatal: a worker with a task in flight when Redis
    went away exited. The chaos run restarts such workers and lists them; here there are none."""
    out = tmp_path / "chaos.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAFLOW_")}
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/chaos.py",
            *("--sagas", "150", "--faults", "3", "--seed", "6", "--kinds", "redis_restart"),
            *("--redis-downtime", "3", "--timeout", "180"),
            *("--logs", str(tmp_path / "run"), "--json", str(out)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    report = result.stdout[-4000:] + result.stderr[-2000:]
    assert out.exists(), report
    figures = json.loads(out.read_text())
    assert figures["faults_by_kind"] == {"redis_restart": 3}, report
    # Celery's prefork result pipe can break after two reconnects seconds apart on a loaded
    # machine (UnpicklingError in asynpool, the worker then hangs in shutdown): the run kills
    # and restarts such a worker as a supervisor would, and nothing may be lost. Any other exit,
    # kombu's AttributeError above all, is what this test exists to catch.
    exits = [e for e in figures["unplanned_exits"] if "UnpicklingError" not in e]
    assert exits == [], report
    assert figures["violations"] == [] and figures["terminal"] == 150, report
