"""Shared fixtures: real brokers, real databases, real Celery worker processes.

A missing Redis or PostgreSQL fails the tests with a clear message; nothing is skipped.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sagaflow.client.saga_client import SagaClient
from sagaflow.config import Settings, ensure_home
from sagaflow.core.machine import SagaRecord
from sagaflow.core.vocabulary import HistoryEvent
from sagaflow.devstack.processes import WorkerGroup, WorkerProcess, WorkerSpec
from sagaflow.store.cache import CHECK_REMEMBERED_ENV
from sagaflow.store.factory import open_store
from sagaflow.store.protocol import SagaStore
from sagaflow.store.sql import SqlSagaStore
from sagaflow.urls import mask_url

ROOT = Path(__file__).resolve().parent.parent
# Each run has a redis-server of its own (pytest_configure below), so two runs on one machine
# never flush or consume each other's queues; SAGAFLOW_TEST_REDIS_URL names another instead.
REDIS_URL = os.environ.get("SAGAFLOW_TEST_REDIS_URL", "")
POSTGRES_ADMIN_URL = os.environ.get(
    "SAGAFLOW_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ("redis-postgres", "embedded")
# A module that sets ON_EVERY_BROKER = True (the engine's own tests) runs each test that takes
# `stack` on every supported broker, the same test on each.
EVERY_BROKER = ("redis-postgres", "rabbitmq-postgres", "embedded")


@pytest.hookimpl(tryfirst=True)  # before pytest reads the marks and gives `stack` its params
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "stack" not in metafunc.fixturenames or not getattr(
        metafunc.module, "ON_EVERY_BROKER", False
    ):
        return
    if any(
        mark.args and "stack" in mark.args[0]
        for mark in metafunc.definition.iter_markers("parametrize")
    ):
        return  # the test names its own brokers
    metafunc.definition.add_marker(pytest.mark.parametrize("stack", EVERY_BROKER, indirect=True))


_own_redis: Any = None


def pytest_configure(config: pytest.Config) -> None:
    global REDIS_URL, _own_redis
    if REDIS_URL:
        return
    import tempfile

    from benchmarks.chaos_cluster import RedisServer

    _own_redis = RedisServer(Path(tempfile.mkdtemp(prefix="sagaflow-test-redis-")))
    _own_redis.start()
    REDIS_URL = _own_redis.url.rsplit("/", 1)[0] + "/15"


def pytest_unconfigure(config: pytest.Config) -> None:
    if _own_redis is not None:
        import shutil

        _own_redis.stop()
        shutil.rmtree(_own_redis.folder, ignore_errors=True)


def redis_url(db: int) -> str:
    """A database number of this run's Redis, for a test that wants one of its own."""
    return REDIS_URL.rsplit("/", 1)[0] + f"/{db}"


def require_redis(url: str | None = None) -> None:
    import redis

    url = url or REDIS_URL
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except Exception as exc:
        pytest.fail(f"Redis at {url} is required for these tests and is not reachable: {exc}")


def create_postgres_database(prefix: str = "sagaflow_test") -> str:
    """A new empty database; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(
            f"PostgreSQL at {mask_url(POSTGRES_ADMIN_URL)} is required for these tests: {exc}"
        )
    finally:
        admin.dispose()
    return sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(False)


def drop_postgres_database(url: str) -> None:
    name = sa.engine.make_url(url).database
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def poll(
    check: Callable[[], Any], timeout: float, describe: Callable[[], str], interval: float = 0.05
) -> Any:
    """Call `check` until it returns something truthy; fail with `describe()` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"still pending after {timeout:g}s: {describe()}")
        time.sleep(interval)


@dataclass
class Stack:
    """An orchestrator and service workers running as processes against one broker and store."""

    name: str
    settings: Settings
    env: dict[str, str]
    group: WorkerGroup
    client: SagaClient
    store: SagaStore
    effects_url: str
    extra: list[WorkerProcess] = field(default_factory=list)

    @property
    def redis(self) -> bool:
        return self.settings.broker_url.startswith("redis")

    def queued(self, queue: str) -> int | None:
        """Messages waiting on `queue` (None on the embedded broker, which cannot tell)."""
        if self.redis:
            import redis

            return int(redis.Redis.from_url(self.settings.broker_url).llen(queue))
        if self.settings.broker_url.startswith("amqp"):
            with self.client.app.connection_for_write() as conn:
                declared = conn.default_channel.queue_declare(queue=queue, passive=True)
                return int(declared.message_count)
        return None

    def start(self, saga_type: str, data: dict[str, Any] | None = None) -> str:
        return self.client.start(saga_type, data or {})

    def wait(self, saga_ids: list[str], timeout: float = 60.0) -> list[SagaRecord]:
        def finished() -> list[SagaRecord] | None:
            sagas = [self.store.load(i) for i in saga_ids]
            if all(s is not None and s.state.is_terminal for s in sagas):
                return [s for s in sagas if s is not None]
            return None

        def pending() -> str:
            out = []
            for saga_id in saga_ids:
                saga = self.store.load(saga_id)
                if saga is None:
                    out.append(f"{saga_id}: not recorded")
                elif not saga.state.is_terminal:
                    steps = ", ".join(f"{s.name}={s.status.value}" for s in saga.steps)
                    out.append(f"{saga_id}: {saga.state.value} [{steps}]")
            return "; ".join(out) + self.logs_hint()

        result: list[SagaRecord] = poll(finished, timeout, pending)
        return result

    def wait_one(self, saga_id: str, timeout: float = 60.0) -> SagaRecord:
        return self.wait([saga_id], timeout)[0]

    def wait_dispatched(self, saga_id: str, position: int, timeout: float = 30.0) -> SagaRecord:
        """Wait until the saga has sent the step at `position` (its action is executing)."""
        from sagaflow import StepStatus

        def dispatched() -> SagaRecord | None:
            saga = self.store.load(saga_id)
            # A saga still `requested` has no steps yet.
            if (
                saga
                and position < len(saga.steps)
                and saga.steps[position].status is StepStatus.EXECUTING
            ):
                return saga
            return None

        result: SagaRecord = poll(
            dispatched,
            timeout,
            lambda: f"saga {saga_id} never dispatched step {position + 1}{self.logs_hint()}",
        )
        return result

    def age(self, saga_id: str, by: timedelta) -> None:
        """Make a saga look stalled: its last change moves back in time."""
        from sagaflow.store.schema import sagas

        # Computed here, not in SQL: SQLite has no timestamp arithmetic.
        updated_at = self.store.get(saga_id).updated_at
        assert updated_at is not None
        # The stack's own store engine: on SQLite it waits out the orchestrator's write lock.
        with self.store.engine.begin() as conn:
            conn.execute(
                sagas.update().where(sagas.c.id == saga_id).values(updated_at=updated_at - by)
            )

    def logs_hint(self) -> str:
        return f" (worker logs in {self.group.log_dir})"

    def executions(self, saga_id: str) -> list[tuple[str, str]]:
        """(step, phase) of every task execution for the saga, in the order they ran."""
        from tests.services import effects_engine_at, executions

        engine = effects_engine_at(self.effects_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(executions.c.step, executions.c.phase)
                    .where(executions.c.saga_id == saga_id)
                    .order_by(executions.c.id)
                ).all()
        finally:
            engine.dispose()
        return [(r.step, r.phase) for r in rows]

    def wait_ignored(self, saga_id: str, count: int, timeout: float = 30.0) -> list[Any]:
        """Wait until the orchestrator has noted `count` ignored outcomes for the saga."""

        def ignored() -> list[Any]:
            return [
                h for h in self.store.history(saga_id) if h.event == HistoryEvent.OUTCOME_IGNORED
            ]

        poll(
            lambda: len(ignored()) >= count,
            timeout,
            lambda: (
                f"{len(ignored())} of {count} ignored outcomes noted for {saga_id}"
                + self.logs_hint()
            ),
        )
        return ignored()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `sagaflow ARGS` against this stack, in a process of its own."""
        return self.run("sagaflow", *args)

    def celery(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `celery -A sagaflow.worker ARGS` against this stack."""
        return self.run("celery", "-A", "sagaflow.worker", *args)

    def run(self, module: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start_worker(self, spec: WorkerSpec) -> WorkerProcess:
        worker = self.group.start(spec)
        self.group.wait_ready(self.client.app, timeout=60)
        return worker


def _service_pool(settings: Settings) -> str:
    # prefork on a server broker so a killed pool child is redelivered (acks_late +
    # reject_on_worker_lost)
    return "solo" if settings.is_filesystem_broker else "prefork"


def service_env(settings: Settings, effects_url: str) -> dict[str, str]:
    """Create the test services' tables at `effects_url`; return the environment that points
    worker processes at these settings and those tables."""
    from tests.services import effects_engine_at, metadata

    engine = effects_engine_at(effects_url)
    metadata.create_all(engine)
    engine.dispose()
    return {
        **os.environ,
        **settings.to_env(),
        "TEST_EFFECTS_URL": effects_url,
        "PYTHONPATH": str(ROOT),
    }


RABBITMQ_URL = os.environ.get("SAGAFLOW_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")


def create_rabbitmq_vhost() -> str:
    """A new virtual host on the machine's RabbitMQ, so this run's queues are its own."""
    import shutil

    name = f"sagaflow-test-{uuid.uuid4().hex[:10]}"
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("RabbitMQ tests need rabbitmqctl on PATH (to make a virtual host of their own)")
    for command in (
        ["add_vhost", name],
        ["set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
    ):
        result = subprocess.run(
            ["rabbitmqctl", *command], capture_output=True, text=True, timeout=60
        )
        if result.returncode != 0:
            pytest.fail(
                f"RabbitMQ is required for these tests: rabbitmqctl {command[0]}: "
                f"{result.stderr or result.stdout}"
            )
    return name


def delete_rabbitmq_vhost(name: str) -> None:
    subprocess.run(["rabbitmqctl", "delete_vhost", name], capture_output=True, timeout=60)


def build_stack(name: str, home: Path) -> Iterator[Stack]:
    pg_url = None
    vhost = None
    if name == "rabbitmq-postgres":
        vhost = create_rabbitmq_vhost()
        pg_url = create_postgres_database()
        settings = Settings(
            home=home,
            broker_url=f"{RABBITMQ_URL}/{vhost}",
            database_url=pg_url,
            definitions=("tests.sagas",),
        )
        effects_url = pg_url
    elif name == "redis-postgres":
        require_redis()
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
        pg_url = create_postgres_database()
        settings = Settings(
            home=home, broker_url=REDIS_URL, database_url=pg_url, definitions=("tests.sagas",)
        )
        effects_url = pg_url
    else:
        settings = Settings(
            home=home,
            broker_url="filesystem://",
            database_url=f"sqlite:///{home / 'sagaflow.db'}",
            definitions=("tests.sagas",),
        )
        effects_url = f"sqlite:///{home / 'effects.db'}"
    ensure_home(settings)
    store = open_store(settings.database_url)
    store.upgrade()
    env = service_env(settings, effects_url)
    group = WorkerGroup(env, home / "logs", cwd=ROOT)
    client = SagaClient(settings, store=store)
    stack = Stack(name, settings, env, group, client, store, effects_url)
    try:
        group.start(
            WorkerSpec(
                "orchestrator", "sagaflow.worker", [settings.queue], pool="threads", concurrency=4
            )
        )
        pool = _service_pool(settings)
        group.start(WorkerSpec("svc_a", "tests.services", ["svc_a"], pool=pool, concurrency=2))
        group.start(WorkerSpec("svc_b", "tests.services", ["svc_b"], pool=pool, concurrency=2))
        group.start(WorkerSpec("plain", "tests.plain_service", ["plain"]))
        group.wait_ready(client.app, timeout=60)
        yield stack
    finally:
        group.stop()
        client.close()
        store.dispose()
        if pg_url:
            drop_postgres_database(pg_url)
        if vhost:
            delete_rabbitmq_vhost(vhost)


@pytest.fixture(autouse=True)
def store_connections_released() -> Iterator[None]:
    """After each test, the idle connections of every store in this process are closed: stores a
    test left open (or a stack keeps) would otherwise hold PostgreSQL's connection slots, which
    two suites running at once on one server would run out of."""
    yield
    SqlSagaStore.dispose_all()


@pytest.fixture(scope="session", autouse=True)
def remembered_sagas_checked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every store of the run, worker processes included, checks each saga it decides on from
    memory against the stored one (SagaStore.transition); a difference fails the run."""
    folder = tmp_path_factory.mktemp("remembered-check")
    os.environ[CHECK_REMEMBERED_ENV] = str(folder)
    yield
    differences = [path.read_text() for path in sorted(folder.iterdir())]
    assert not differences, f"remembered sagas differed from the stored ones: {differences}"


@pytest.fixture(scope="module")
def rabbitmq_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack on RabbitMQ (a virtual host of its own) and PostgreSQL."""
    yield from build_stack("rabbitmq-postgres", tmp_path_factory.mktemp("stack-rabbitmq"))


@pytest.fixture(scope="session", params=BACKENDS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp(f"stack-{request.param}")
    yield from build_stack(request.param, home)


def http_get(url: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def dashboard_process(stack: Stack) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sagaflow", "dashboard", "--port", str(port)],
        cwd=ROOT,
        env={**stack.env, "NO_COLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(f"sagaflow dashboard exited {process.returncode}: {output}")
        try:
            return http_get(f"{url}/healthz")[0] == 200
        except OSError:
            return False

    try:
        poll(answers, 30, lambda: f"dashboard on {url} never answered")
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=15)


def drop_pooled_connection(store: SagaStore, server: sa.Engine) -> None:
    """Have PostgreSQL terminate the connection `store`'s pool holds (its only one: it is used
    one call at a time), as a server restart would; `server` is another engine on the server."""
    with store.engine.connect() as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    with server.connect() as conn:
        dropped = conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        assert dropped.scalar_one() is True


def query_plans(run: Callable[[SagaStore], Any]) -> list[str]:
    """PostgreSQL's plan of every SELECT that `run(store)` issues, against a new empty store.

    Sequential scans are switched off for the EXPLAIN: on empty tables the planner would pick
    them anyway, so this says whether an index can serve the query.
    """
    url = create_postgres_database()
    store = open_store(url)
    try:
        store.upgrade()
        captured: list[tuple[str, Any]] = []

        def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
            if statement.lstrip().upper().startswith("SELECT"):
                captured.append((statement, params))

        sa.event.listen(store.engine, "before_cursor_execute", capture)
        run(store)
        sa.event.remove(store.engine, "before_cursor_execute", capture)
        with store.engine.connect() as conn:
            conn.exec_driver_sql("SET enable_seqscan = off")
            return [
                "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {statement}", params))
                for statement, params in captured
            ]
    finally:
        store.dispose()
        drop_postgres_database(url)
