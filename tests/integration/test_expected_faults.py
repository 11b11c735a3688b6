"""Faults the engine handles log as such: a warning line saying what happens next, and no
traceback. PostgreSQL drops the orchestrator's store connections (pg_terminate_backend on
this test's database only, as a server restart would) while sagas run."""

from __future__ import annotations

import time
from pathlib import Path

import redis
import sqlalchemy as sa

from sagaflow import SagaState
from sagaflow.client.saga_client import SagaClient
from sagaflow.config import Settings, ensure_home
from sagaflow.core.protocol import RECOVER_TASK
from sagaflow.devstack.processes import WorkerGroup, WorkerProcess, WorkerSpec
from sagaflow.store.factory import open_store
from tests.conftest import (
    POSTGRES_ADMIN_URL,
    REDIS_URL,
    ROOT,
    create_postgres_database,
    drop_postgres_database,
    poll,
    require_redis,
    service_env,
)

# Noise a handled fault used to leave in the orchestrator's log.
UNEXPECTED = (
    "Traceback",
    "raised unexpected",
    "error ignored",  # psycopg, leaving a pipeline
    "Exception during reset",  # SQLAlchemy's pool, rolling back a dead connection
)


def drop_store_connections(admin: sa.Engine, database_url: str) -> int:
    """Terminate the connections named `sagaflow` to this database (the workers' store)."""
    with admin.connect() as conn:
        dropped = conn.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :name AND application_name = 'sagaflow'"
            ),
            {"name": sa.engine.make_url(database_url).database},
        ).scalar_one()
    return int(dropped)


def log_of(worker: WorkerProcess) -> str:
    return worker.log_path.read_text(errors="replace")


def test_dropped_store_connections_log_one_warning_each_and_no_traceback(
    tmp_path: Path,
) -> None:
    require_redis()
    database_url = create_postgres_database("sagaflow_drops")
    broker_url = REDIS_URL.rsplit("/", 1)[0] + "/14"
    redis.Redis.from_url(broker_url).flushdb()
    home = tmp_path / "home"
    # A short stall timeout: a transition whose COMMIT went through as its connection was
    # dropped is retried, ignored as a duplicate, and its next step sent by the sweep.
    settings = Settings(
        home=home,
        broker_url=broker_url,
        database_url=database_url,
        definitions=("tests.sagas",),
        stall_timeout=3.0,
    )
    ensure_home(settings)
    open_store(database_url).upgrade()
    # The test reads and records starts under a name of its own: only the workers' drop.
    reader = open_store(
        sa.engine.make_url(database_url)
        .update_query_dict({"application_name": "sagaflow_test"})
        .render_as_string(False)
    )
    client = SagaClient(settings, store=reader)
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    env = service_env(settings, f"sqlite:///{tmp_path / 'effects.db'}")
    try:
        with WorkerGroup(env, home / "logs", cwd=ROOT) as group:
            orchestrator = group.start(
                WorkerSpec(
                    "orchestrator", "sagaflow.worker", [settings.queue], "threads", concurrency=4
                )
            )
            group.start(WorkerSpec("svc", "tests.services", ["svc_a", "svc_b"], "threads", 4))
            group.wait_ready(client.app)
            ids = [client.start("trip", {})]
            client.wait(ids[0], timeout=60)  # the orchestrator now holds pooled connections

            # A recovery sweep that meets a dropped connection is skipped, with one warning.
            assert drop_store_connections(admin, database_url) >= 1
            client.app.send_task(RECOVER_TASK, queue=settings.queue)
            poll(
                lambda: "recovery sweep skipped" in log_of(orchestrator),
                60,
                lambda: "no warning of the skipped sweep:\n" + orchestrator.log_tail(),
            )

            # A transition that meets one is retried, with one warning.
            ids.append(client.start("trip", {}))
            client.wait(ids[-1], timeout=60)  # connected again
            assert drop_store_connections(admin, database_url) >= 1
            ids.append(client.start("trip", {}))
            poll(
                lambda: "is retried in" in log_of(orchestrator),
                60,
                lambda: "no warning of the retried transition:\n" + orchestrator.log_tail(),
            )

            swept = [time.monotonic()]

            def sweep_now_and_then() -> None:
                if time.monotonic() - swept[0] > 2:  # the beat's job, as in production
                    client.app.send_task(RECOVER_TASK, queue=settings.queue)
                    swept[0] = time.monotonic()

            def all_completed() -> bool:
                sweep_now_and_then()
                return reader.count_by_state(ids).get(SagaState.COMPLETED.value) == len(ids)

            # Drops while sagas run: each time the sagas have moved since the last one. The
            # last of them may wait for a sweep (a COMMIT that went through as it was dropped).
            ids += [client.start("trip", {}) for _ in range(20)]
            moved = [reader.count_by_state(ids)]
            for _ in range(6):
                poll(
                    lambda: all_completed() or reader.count_by_state(ids) != moved[-1],
                    60,
                    lambda: f"sagas stuck at {moved[-1]}:\n" + orchestrator.log_tail(),
                )
                if all_completed():
                    break
                moved.append(reader.count_by_state(ids))
                drop_store_connections(admin, database_url)

            poll(
                all_completed,
                120,
                lambda: f"sagas {reader.count_by_state(ids)}:\n" + orchestrator.log_tail(),
            )
            group.stop()
        log = log_of(orchestrator)
        found = {text: log.count(text) for text in UNEXPECTED if text in log}
        assert found == {}, f"in {orchestrator.log_path}"
        warnings = [line for line in log.splitlines() if "WARNING" in line]
        skipped = [line for line in warnings if "recovery sweep skipped: saga store" in line]
        assert skipped and all(line.endswith("next sweep in 15s") for line in skipped)
        retried = [line for line in warnings if "unavailable" in line and "is retried in" in line]
        assert retried and all("; the transition (sagaflow." in line for line in retried)
    finally:
        reader.dispose()
        admin.dispose()
        drop_postgres_database(database_url)
