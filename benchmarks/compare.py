"""sagaflow against a plain Celery chain and DBOS Transact, measured in one run on one machine.

    python benchmarks/compare.py                  # 1,000 sagas, 200 latency runs, 6 contenders
    python benchmarks/compare.py --sagas 100 --latency-runs 20 --contenders sagaflow,chain
    python benchmarks/compare.py --contenders sagaflow --prefill 10000,1000000
    python benchmarks/compare.py --contenders sagaflow,chain --repeat 3   # ratios' spread

Workload: 5 no-op steps per saga (and a variant where step 3 fails, so 2 compensations run).
Redis broker; one orchestrator worker and one service worker, both prefork -c 2; the chain runs
on a stock Celery worker (benchmarks/chain_tasks.py) with the same settings. Contenders:

    sagaflow          store on PostgreSQL
    sagaflow_sqlite   store on a SQLite file (a fresh one per run), same broker and workers
    sagaflow_2orch    store on PostgreSQL, two orchestrator workers (orchestrator1@, orchestrator2@)
    relay             sagaflow's messages without its store: a stateless orchestrator on the same
                      queue sends each step as sagaflow does (benchmarks/relay_tasks.py); the
                      floor of sagaflow's shape, two hops per step
    chain             a plain Celery chain with link_error
    dbos              DBOS Transact on the same PostgreSQL, 8 threads

Figures: end-to-end throughput for N sagas enqueued at once, single-saga latency on an idle
system (p50, p99), messages published and SQL commits per saga, orchestrator RSS. For the
sagaflow contenders and the relay also the latency of each saga with 8 kept in flight (a new
one starts as one finishes; p50_ms_8, p99_ms_8, over --latency-runs completions). SQL commits
are PostgreSQL's own counter (pg_stat_database.xact_commit), so sagaflow_sqlite has none.
--prefill N,M stores N (then M) finished sagas in the sagaflow contender's PostgreSQL database
(benchmarks/scale.py's seeding) and measures throughput and status/list latency at each size
("scale" in the JSON). Raw figures go to benchmarks/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from kombu.connection import Connection  # noqa: E402
from kombu.entity import Exchange, Queue  # noqa: E402
from kombu.message import Message  # noqa: E402
from kombu.messaging import Consumer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from sagaflow.client.saga_client import SagaClient  # noqa: E402
from sagaflow.config import Settings  # noqa: E402
from sagaflow.core.protocol import START_TASK  # noqa: E402
from sagaflow.devstack.processes import WorkerGroup, WorkerProcess, WorkerSpec  # noqa: E402
from sagaflow.store.factory import open_store  # noqa: E402

# Wide enough for the tables when the output goes to a file or a pipe (rich assumes 80 there).
console = Console(width=None if sys.stdout.isatty() else 150)
EVENTS_QUEUE = "bench-saga-events"
CONTENDERS = ("sagaflow", "sagaflow_sqlite", "sagaflow_2orch", "relay", "chain", "dbos")
SAGAFLOW_CONTENDERS = ("sagaflow", "sagaflow_sqlite", "sagaflow_2orch")
DEADLINE_S = 300.0  # for one run of sagas to reach their outcomes


class Contender(Protocol):
    name: str

    def run(self, n: int, fail: bool) -> tuple[float, list[str]]: ...

    def close(self) -> None: ...


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def pg_admin(url: str) -> sa.engine.Engine:
    return sa.create_engine(url, isolation_level="AUTOCOMMIT")


def create_database(admin_url: str, name: str) -> str:
    engine = pg_admin(admin_url)
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return sa.engine.make_url(admin_url).set(database=name).render_as_string(False)


def drop_database(admin_url: str, name: str) -> None:
    engine = pg_admin(admin_url)
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def commits(url: str) -> int:
    """Committed transactions in the database so far (PostgreSQL's own counter)."""
    name = sa.engine.make_url(url).database
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        value = conn.execute(
            sa.text("SELECT xact_commit FROM pg_stat_database WHERE datname = :n"), {"n": name}
        ).scalar_one()
    engine.dispose()
    return int(value)


def wait_for_stats_flush() -> None:
    # A PostgreSQL backend that goes idle reports its pending counters within 10 s
    # (PGSTAT_IDLE_INTERVAL); read xact_commit only once every backend has reported.
    time.sleep(10.5)


def published(r: redis.Redis) -> int:
    """Messages published to Redis lists so far (kombu publishes with LPUSH)."""
    stats = r.info("commandstats")
    return int(stats.get("cmdstat_lpush", {}).get("calls", 0))


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (a prefork worker's pool), in MB."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


# Modules every benchmark worker also imports (`celery worker -I`): breakdown.py's probe.
WORKER_INCLUDES: list[str] = []


def worker_spec(name: str, app: str, queue: str) -> WorkerSpec:
    """Every contender's workers: prefork, 2 processes."""
    extra = ["-l", os.environ.get("BENCH_LOG_LEVEL", "warning")]
    if WORKER_INCLUDES:
        extra += ["-I", ",".join(WORKER_INCLUDES)]
    return WorkerSpec(name, app, [queue], pool="prefork", concurrency=2, extra_args=extra)


# -- sagaflow ------------------------------------------------------------------------------------


class EventsContender:
    """Sagas started by `_start` whose outcomes are read from sagaflow's events exchange,
    consumed with a blocking wait (no polling loop competing for the CPU)."""

    name: str
    settings: Settings
    group: WorkerGroup
    orchestrators: list[WorkerProcess]

    def __init__(self, redis_url: str) -> None:
        # Outcome events as they arrive: (saga id, state, perf_counter when received).
        self.arrived: deque[tuple[str, str, float]] = deque()
        self.connection = Connection(redis_url)  # type: ignore[no-untyped-call]
        channel = self.connection.channel()  # type: ignore[no-untyped-call]
        exchange = Exchange(self.settings.events_exchange, type="topic", durable=True)  # type: ignore[no-untyped-call]
        self.events = Queue(EVENTS_QUEUE, exchange=exchange, routing_key="bench5.#")(channel)  # type: ignore[no-untyped-call]
        self.events.declare()  # type: ignore[no-untyped-call]
        self.events.purge()  # type: ignore[no-untyped-call]
        self.consumer = Consumer(  # type: ignore[no-untyped-call]
            channel,
            queues=[self.events],
            callbacks=[self._on_event],
            accept=["json"],
            no_ack=True,
        )
        self.consumer.consume()  # type: ignore[no-untyped-call]

    def _start(self, fail: bool) -> str:
        raise NotImplementedError

    def _on_event(self, body: dict[str, Any], _message: Message) -> None:
        self.arrived.append((body["saga_id"], body["state"], time.perf_counter()))

    def _next_outcome(self, deadline: float, pending: int) -> tuple[str, str, float]:
        """The next outcome event, waiting for it on the connection (blocking BRPOP)."""
        while not self.arrived:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{self.name}: {pending} sagas still pending after {DEADLINE_S:g} s"
                )
            try:
                self.connection.drain_events(timeout=min(1.0, remaining))  # type: ignore[no-untyped-call]
            except TimeoutError:  # nothing arrived within the timeout
                continue
        return self.arrived.popleft()

    def run(self, n: int, fail: bool) -> tuple[float, list[str]]:
        """Start n sagas at once; seconds until all of them reported an outcome."""
        started = time.perf_counter()
        pending = {self._start(fail) for _ in range(n)}
        states: list[str] = []
        deadline = time.monotonic() + DEADLINE_S
        while pending:
            saga_id, state, _at = self._next_outcome(deadline, len(pending))
            if saga_id in pending:
                pending.discard(saga_id)
                states.append(state)
        return time.perf_counter() - started, states

    def run_in_flight(self, completions: int, in_flight: int) -> list[float]:
        """Keep `in_flight` sagas running (a new one starts as each finishes) until
        `completions` have finished; each one's start-to-outcome latency in ms. The sagas
        still running at the end are waited for but not counted."""
        started_at: dict[str, float] = {}

        def start_one() -> None:
            at = time.perf_counter()
            started_at[self._start(False)] = at

        for _ in range(in_flight):
            start_one()
        latencies: list[float] = []
        deadline = time.monotonic() + DEADLINE_S
        while started_at:
            saga_id, state, at = self._next_outcome(deadline, len(started_at))
            began = started_at.pop(saga_id, None)
            if began is None:
                continue
            if state != "completed":
                raise RuntimeError(f"{self.name}: saga {saga_id} ended {state}")
            if len(latencies) < completions:
                latencies.append((at - began) * 1000)
                if len(latencies) < completions:
                    start_one()
        return latencies

    def orchestrator_rss_mb(self) -> float:
        return sum(rss_mb(o.process.pid) for o in self.orchestrators)

    def close(self) -> None:
        self.consumer.cancel()  # type: ignore[no-untyped-call]
        self.events.delete()  # type: ignore[no-untyped-call]
        self.connection.release()  # type: ignore[no-untyped-call]
        self.group.stop()


class SagaflowContender(EventsContender):
    """sagaflow's orchestrator and service workers on one store."""

    def __init__(
        self,
        name: str,
        redis_url: str,
        database_url: str,
        logs: Path,
        orchestrators: int = 1,
    ) -> None:
        self.name = name
        self.redis_url = redis_url
        self.database_url = database_url
        self.settings = Settings(
            home=logs / "home",
            broker_url=redis_url,
            database_url=database_url,
            definitions=("benchmarks.bench_sagas",),
        )
        self.store = open_store(database_url)
        self.store.upgrade()
        env = {
            **os.environ,
            **self.settings.to_env(),
            "PYTHONPATH": str(ROOT),
            "BENCH_SIGNAL_URL": redis_url,
        }
        self.group = WorkerGroup(env, logs, cwd=ROOT)
        self.client = SagaClient(self.settings, store=self.store)
        names = (
            ["orchestrator"]
            if orchestrators == 1
            else [f"orchestrator{i}" for i in range(1, orchestrators + 1)]
        )
        self.orchestrators = [
            self.group.start(worker_spec(n, "sagaflow.worker", "sagaflow")) for n in names
        ]
        self.group.start(worker_spec("bench", "benchmarks.bench_tasks", "bench"))
        self.group.wait_ready(self.client.app)
        super().__init__(redis_url)

    def _start(self, fail: bool) -> str:
        return self.client.start("bench5", {"fail_at": "s3"} if fail else {})

    def orchestrator_tasks(self) -> dict[str, int]:
        """Tasks each orchestrator worker ran so far (from `celery inspect stats`)."""
        replies = self.client.app.control.inspect(timeout=2.0).stats() or {}
        return {
            node: sum(stats.get("total", {}).values())
            for node, stats in sorted(replies.items())
            if node.startswith("orchestrator")
        }

    def close(self) -> None:
        super().close()
        self.store.dispose()


class RelayContender(EventsContender):
    """sagaflow's messages without its store: benchmarks/relay_tasks.py's stateless
    orchestrator, with sagaflow's service worker and the same worker settings."""

    name = "relay"

    def __init__(self, redis_url: str, logs: Path) -> None:
        self.settings = Settings(
            home=logs / "home", broker_url=redis_url, definitions=("benchmarks.bench_sagas",)
        )
        env = {**os.environ, **self.settings.to_env(), "PYTHONPATH": str(ROOT)}
        self.group = WorkerGroup(env, logs, cwd=ROOT)
        self.orchestrators = [
            self.group.start(worker_spec("orchestrator", "benchmarks.relay_tasks", "sagaflow"))
        ]
        self.group.start(worker_spec("bench", "benchmarks.bench_tasks", "bench"))
        from benchmarks import relay_tasks

        self.relay = relay_tasks
        self.group.wait_ready(relay_tasks.app)
        super().__init__(redis_url)

    def _start(self, fail: bool) -> str:
        saga_id = (self.relay.FAILING if fail else "") + str(uuid.uuid4())
        self.relay.app.send_task(
            START_TASK,
            kwargs={"saga_id": saga_id, "saga_type": "bench5", "data": {}},
            queue=self.settings.queue,
        )
        return saga_id


# -- plain chain -----------------------------------------------------------------------------------


class ChainContender:
    name = "chain"

    def __init__(self, redis_url: str, logs: Path, settings: Settings) -> None:
        from benchmarks import chain_tasks

        self.tasks = chain_tasks
        self.redis = redis.Redis.from_url(redis_url)
        env = {
            **os.environ,
            **settings.to_env(),
            "PYTHONPATH": str(ROOT),
            "BENCH_SIGNAL_URL": redis_url,
        }
        self.group = WorkerGroup(env, logs, cwd=ROOT)
        self.group.start(worker_spec("bench", "benchmarks.chain_tasks", "bench"))
        self.app = chain_tasks.app
        self.group.wait_ready(self.app)
        self.redis.delete(chain_tasks.DONE_LIST)

    def send(self, fail: bool) -> str:
        from celery import chain

        t = self.tasks
        chain_id = str(uuid.uuid4())
        fail_at = 3 if fail else 0
        steps = []
        for n in range(1, 6):
            args = (None, chain_id, n, fail_at) if n == 1 else (chain_id, n, fail_at)
            sig = t.chain_step.s(*args).set(queue="bench")
            steps.append(sig.on_error(t.chain_failed.s(chain_id, n - 1).set(queue="bench")))
        chain(*steps, t.chain_done.s(chain_id).set(queue="bench")).apply_async()
        return chain_id

    def run(self, n: int, fail: bool) -> tuple[float, list[str]]:
        started = time.perf_counter()
        ids = {self.send(fail) for _ in range(n)}
        done = 0
        deadline = time.monotonic() + DEADLINE_S
        while done < len(ids):
            item = self.redis.blpop(self.tasks.DONE_LIST, timeout=1)
            if item is None and time.monotonic() > deadline:
                raise TimeoutError(f"{len(ids) - done} chains never finished")
            if item is not None:
                done += 1
        return time.perf_counter() - started, ["failed" if fail else "completed"] * n

    def close(self) -> None:
        self.group.stop()


# -- DBOS ---------------------------------------------------------------------------------------


class DbosContender:
    name = "dbos"

    def __init__(self, database_url: str) -> None:
        from dbos import DBOS, DBOSConfig

        self.database_url = database_url
        url = sa.engine.make_url(database_url).set(drivername="postgresql")
        config: DBOSConfig = {
            "name": "bench",
            "system_database_url": url.render_as_string(False),
            "log_level": "WARNING",
        }
        DBOS(config=config)

        @DBOS.step()
        def noop(i: int) -> int:
            return i

        @DBOS.step()
        def refuse(i: int) -> int:
            raise RuntimeError(f"step {i} fails as asked")

        @DBOS.step()
        def undo(i: int) -> int:
            return i

        @DBOS.workflow()
        def saga(fail_at: int) -> str:
            done: list[int] = []
            for i in range(1, 6):
                try:
                    (refuse if i == fail_at else noop)(i)
                except Exception:
                    for j in reversed(done):
                        undo(j)
                    return "failed"
                done.append(i)
            return "completed"

        self.saga: Callable[[int], str] = saga
        self.dbos = DBOS
        DBOS.launch()

    def run(self, n: int, fail: bool, threads: int = 8) -> tuple[float, list[str]]:
        fail_at = 3 if fail else 0
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            states = list(pool.map(lambda _: self.saga(fail_at), range(n)))
        return time.perf_counter() - started, states

    def close(self) -> None:
        self.dbos.destroy()


# -- measuring -----------------------------------------------------------------------------------


def measure(
    contender: Contender,
    n: int,
    latency_runs: int,
    commits_of: Callable[[], int] | None,
    r: redis.Redis,
    in_flight: int = 8,
) -> dict[str, Any]:
    name = contender.name
    contender.run(min(20, n), False)  # warm up: connections, imports, first queries
    result: dict[str, Any] = {}
    with console.status(f"{name}: latency, {latency_runs} single sagas on an idle system"):
        latencies = []
        for _ in range(latency_runs):
            seconds, _states = contender.run(1, False)
            latencies.append(seconds * 1000)
    result["p50_ms"] = round(percentile(latencies, 50), 2)
    result["p99_ms"] = round(percentile(latencies, 99), 2)
    if isinstance(contender, EventsContender):
        with console.status(f"{name}: latency, {latency_runs} sagas with {in_flight} in flight"):
            latencies = contender.run_in_flight(latency_runs, in_flight)
        result[f"p50_ms_{in_flight}"] = round(percentile(latencies, 50), 2)
        result[f"p99_ms_{in_flight}"] = round(percentile(latencies, 99), 2)
    if commits_of:
        wait_for_stats_flush()
    before_commits = commits_of() if commits_of else 0
    for fail in (False, True):
        label = "failing at step 3" if fail else "all steps succeed"
        with console.status(f"{name}: throughput, {n} sagas at once, {label}"):
            before_messages = published(r)
            seconds, states = contender.run(n, fail)
            after_messages = published(r)
            if commits_of:
                wait_for_stats_flush()
            after_commits = commits_of() if commits_of else 0
        expected = "failed" if fail else "completed"
        if states.count(expected) != n:
            raise RuntimeError(f"{name}: expected {n} {expected}, got {states[:5]}...")
        key = "_fail" if fail else ""
        result[f"throughput_per_s{key}"] = round(n / seconds, 1)
        if commits_of:
            result[f"sql_commits_per_saga{key}"] = round((after_commits - before_commits) / n, 2)
        result[f"messages_per_saga{key}"] = round((after_messages - before_messages) / n, 2)
        before_commits = after_commits
    return result


def measure_scale(
    flow: SagaflowContender, url: str, sizes: list[int], n: int
) -> list[dict[str, Any]]:
    """Store finished sagas up to each size, then time status/list reads and a throughput run
    of n sagas (all steps succeed) against that store."""
    from benchmarks.scale import seed, timed  # scale.py imports this module: import late

    rows: list[dict[str, Any]] = []
    stored = 0
    for size in sizes:
        with console.status(f"scale: storing {size:,} finished sagas"):
            seed_seconds = seed(url, size, stored)
        stored = size
        with console.status(f"scale: status and list latency with {size:,} stored"):
            ids = [f"seed-{random.randint(1, size)}" for _ in range(200)]
            pick = iter(ids * 2)
            flow.store.get(ids[0])  # connect
            status = timed(lambda pick=pick: flow.store.get(next(pick)))
            listing = timed(lambda: flow.store.list_sagas(state="failed", limit=50))
        with console.status(f"scale: throughput, {n} sagas with {size:,} stored"):
            seconds, states = flow.run(n, False)
        if states.count("completed") != n:
            raise RuntimeError(f"scale: expected {n} completed, got {states[:5]}...")
        rows.append(
            {
                "stored_sagas": size,
                "seed_seconds": round(seed_seconds, 1),
                "throughput_per_s": round(n / seconds, 1),
                "status_p50_ms": status[0],
                "status_p99_ms": status[1],
                "list_p50_ms": listing[0],
                "list_p99_ms": listing[1],
            }
        )
    return rows


def ratios(report: dict[str, Any], in_flight: int) -> dict[str, float]:
    """The ratios the performance targets are stated in (only those whose figures exist)."""
    out: dict[str, float] = {}

    def ratio(key: str, a: str, b: str, field: str) -> None:
        if a in report and b in report and report[b].get(field) and field in report[a]:
            out[key] = round(report[a][field] / report[b][field], 2)

    for other in ("chain", "dbos", "relay"):
        ratio(f"sagaflow_vs_{other}_throughput", "sagaflow", other, "throughput_per_s")
        ratio(f"sagaflow_vs_{other}_p50", "sagaflow", other, "p50_ms")
    ratio("relay_vs_chain_throughput", "relay", "chain", "throughput_per_s")
    ratio("relay_vs_chain_p50", "relay", "chain", "p50_ms")
    ratio("sqlite_vs_postgres_throughput", "sagaflow_sqlite", "sagaflow", "throughput_per_s")
    ratio(
        "sqlite_vs_postgres_throughput_fail",
        "sagaflow_sqlite",
        "sagaflow",
        "throughput_per_s_fail",
    )
    ratio("two_vs_one_orchestrator_throughput", "sagaflow_2orch", "sagaflow", "throughput_per_s")
    ratio(
        "two_vs_one_orchestrator_throughput_fail",
        "sagaflow_2orch",
        "sagaflow",
        "throughput_per_s_fail",
    )
    for name in ("sagaflow", "sagaflow_sqlite"):
        row = report.get(name, {})
        p50, p99 = row.get(f"p50_ms_{in_flight}"), row.get(f"p99_ms_{in_flight}")
        if p50 and p99:
            out[f"{name}_p99_vs_p50_{in_flight}_in_flight"] = round(p99 / p50, 2)
    return out


def machine() -> dict[str, Any]:
    import celery
    import kombu
    import sqlalchemy

    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "sqlalchemy": sqlalchemy.__version__,
    }
    try:
        from importlib.metadata import version

        info["dbos"] = version("dbos")
    except Exception:
        info["dbos"] = None
    return info


def run_chain(
    args: argparse.Namespace,
    logs: Path,
    settings: Settings,
    r: redis.Redis,
    results: dict[str, Any],
) -> None:
    """Start the plain chain's worker, measure it into results["chain"], stop it."""
    chain = ChainContender(args.redis_url, logs / "chain", settings)
    try:
        results["chain"] = measure(chain, args.sagas, args.latency_runs, None, r)
    finally:
        chain.close()


def run_relay(
    args: argparse.Namespace, logs: Path, r: redis.Redis, results: dict[str, Any]
) -> None:
    """Start the relay's workers, measure them into results["relay"], stop them."""
    relay = RelayContender(args.redis_url, logs / "relay")
    try:
        row = measure(relay, args.sagas, args.latency_runs, None, r, args.in_flight)
        row["orchestrator_rss_mb"] = round(relay.orchestrator_rss_mb(), 1)
        results["relay"] = row
    finally:
        relay.close()


def run_sagaflow(
    name: str,
    args: argparse.Namespace,
    logs: Path,
    run_id: str,
    r: redis.Redis,
    results: dict[str, Any],
    measured: bool = True,
    scale: bool = True,
) -> None:
    """Start one sagaflow contender, measure it into results[name], stop it; the PostgreSQL
    contender also runs the --prefill sizes (results["scale"]) unless `scale` is off."""
    sqlite = name == "sagaflow_sqlite"
    orchestrators = 2 if name == "sagaflow_2orch" else 1
    database = f"{name}_bench_{run_id}"
    sqlite_file = logs / name / f"{database}.db"
    if sqlite:
        sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{sqlite_file}"
    else:
        url = create_database(args.postgres_url, database)
    try:
        flow = SagaflowContender(name, args.redis_url, url, logs / name, orchestrators)
        try:
            if measured:
                commits_of = None if sqlite else (lambda: commits(url))
                row = measure(flow, args.sagas, args.latency_runs, commits_of, r, args.in_flight)
                row["orchestrators"] = orchestrators
                row["orchestrator_rss_mb"] = round(flow.orchestrator_rss_mb(), 1)
                row["orchestrator_tasks"] = flow.orchestrator_tasks()
                if not sqlite:
                    row["sql_writes_per_saga"] = row["sql_commits_per_saga"]
                results[name] = row
            if name == "sagaflow" and args.prefill and scale:
                if not measured:
                    flow.run(min(20, args.sagas), False)  # warm up
                results["scale"] = measure_scale(flow, url, args.prefill, args.sagas)
        finally:
            flow.close()
    finally:
        if sqlite:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{sqlite_file}{suffix}").unlink(missing_ok=True)
        else:
            drop_database(args.postgres_url, database)


ROUND_FIELDS = ("throughput_per_s", "throughput_per_s_fail", "p50_ms")


def round_figures(results: dict[str, Any]) -> dict[str, Any]:
    """One round of sagaflow against the chain: their figures and sagaflow/chain ratios."""
    figures: dict[str, Any] = {
        name: {key: results[name][key] for key in ROUND_FIELDS} for name in ("sagaflow", "chain")
    }
    figures["ratios"] = {
        key: round(results["sagaflow"][key] / results["chain"][key], 2) for key in ROUND_FIELDS
    }
    return figures


def chosen_contenders(
    parser: argparse.ArgumentParser, text: str, known: tuple[str, ...]
) -> list[str]:
    """--contenders' value as a list; a name not in `known` is a usage error."""
    contenders = [c.strip() for c in text.split(",") if c.strip()]
    unknown = sorted(set(contenders) - set(known))
    if unknown:
        parser.error(f"unknown contenders {', '.join(unknown)} (known: {', '.join(known)})")
    return contenders


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """--redis-url and --postgres-url (an admin URL: each contender gets a database of its own)."""
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )


def sizes(text: str) -> list[int]:
    """--prefill's value: store sizes, comma-separated, smallest first."""
    values = sorted(int(part) for part in text.split(",") if part.strip())
    if any(v <= 0 for v in values):
        raise ValueError(text)
    return values


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sagas", type=int, default=1000)
    parser.add_argument(
        "--latency-runs",
        type=int,
        default=200,
        help="single sagas timed on an idle system, and sagas timed with --in-flight running",
    )
    parser.add_argument(
        "--in-flight", type=int, default=8, help="sagas kept running for the loaded latency"
    )
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument(
        "--prefill",
        type=sizes,
        default=[],
        help="finished sagas to store before measuring again, e.g. 10000,1000000",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of sagaflow and the chain, one after the other; prints each round's ratios "
        "and their median (the chain's throughput moves by a fifth from run to run on a VM)",
    )
    add_connection_args(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/latest.json")
    args = parser.parse_args()
    contenders = chosen_contenders(parser, args.contenders, CONTENDERS)
    if args.repeat < 1 or (args.repeat > 1 and not {"sagaflow", "chain"} <= set(contenders)):
        parser.error("--repeat N: N >= 1, and more than 1 round needs sagaflow and chain")

    os.environ["SAGAFLOW_BROKER_URL"] = args.redis_url  # for the chain's producer app
    r = redis.Redis.from_url(args.redis_url)
    r.flushdb()
    logs = Path(os.environ.get("BENCH_LOGS", "/tmp/sagaflow-bench"))
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    run_id = uuid.uuid4().hex[:8]
    settings = Settings(home=logs / "home", broker_url=args.redis_url)

    if "chain" in contenders:
        run_chain(args, logs, settings, r, results)
    if "relay" in contenders:
        run_relay(args, logs, r, results)
    if "sagaflow" in contenders or args.prefill:
        run_sagaflow("sagaflow", args, logs, run_id, r, results, "sagaflow" in contenders)
    for name in ("sagaflow_sqlite", "sagaflow_2orch"):
        if name in contenders:
            run_sagaflow(name, args, logs, run_id, r, results)
    if "dbos" in contenders:
        name = f"dbos_bench_{run_id}"
        url = create_database(args.postgres_url, name)
        dbos = DbosContender(url)
        try:
            results["dbos"] = measure(dbos, args.sagas, args.latency_runs, lambda: commits(url), r)
            results["dbos"].pop("messages_per_saga", None)
            results["dbos"].pop("messages_per_saga_fail", None)
        finally:
            dbos.close()
            drop_database(args.postgres_url, name)

    rounds = []
    if args.repeat > 1:
        rounds.append(round_figures(results))
    for k in range(2, args.repeat + 1):
        again: dict[str, Any] = {}
        run_chain(args, logs, settings, r, again)
        run_sagaflow("sagaflow", args, logs, f"{run_id}_{k}", r, again, scale=False)
        rounds.append(round_figures(again))

    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sagas": args.sagas,
        "latency_runs": args.latency_runs,
        "in_flight": args.in_flight,
        "machine": machine(),
        **results,
    }
    report["ratios"] = ratios(report, args.in_flight)
    if rounds:
        report["rounds"] = rounds
        for key in ROUND_FIELDS:
            report["ratios"][f"sagaflow_vs_chain_{key}_median"] = round(
                statistics.median(figures["ratios"][key] for figures in rounds), 2
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_tables(report)
    console.print(f"raw figures: {args.out}")
    return 0


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    return "-" if value is None else str(value)


def print_tables(report: dict[str, Any]) -> None:
    k = report["in_flight"]
    table = Table(
        title=f"{report['sagas']} sagas of 5 no-op steps; latency (ms) over "
        f"{report['latency_runs']} single sagas, and over {report['latency_runs']} sagas with "
        f"{k} in flight (@{k})"
    )
    table.add_column("contender", no_wrap=True)
    for column in (
        "sagas/s",
        "sagas/s, step 3 fails",
        "p50",
        "p99",
        f"p50 @{k}",
        f"p99 @{k}",
        "messages/saga",
        "SQL commits/saga",
        "orchestrator RSS MB",
    ):
        table.add_column(column, justify="right")
    for name in CONTENDERS:
        if name not in report:
            continue
        row = report[name]
        table.add_row(
            name,
            _cell(row, "throughput_per_s"),
            _cell(row, "throughput_per_s_fail"),
            _cell(row, "p50_ms"),
            _cell(row, "p99_ms"),
            _cell(row, f"p50_ms_{k}"),
            _cell(row, f"p99_ms_{k}"),
            _cell(row, "messages_per_saga"),
            _cell(row, "sql_commits_per_saga"),
            _cell(row, "orchestrator_rss_mb"),
        )
    console.print(table)
    if "sagaflow_sqlite" in report:
        console.print(
            "sagaflow_sqlite: no SQL commit count (read from PostgreSQL's pg_stat_database)"
        )

    pairs = [
        ("sagaflow / chain", "sagaflow", "chain"),
        ("sagaflow / dbos", "sagaflow", "dbos"),
        ("sagaflow / relay", "sagaflow", "relay"),
        ("relay / chain", "relay", "chain"),
        ("sagaflow_sqlite / sagaflow", "sagaflow_sqlite", "sagaflow"),
        ("2 orchestrators / 1", "sagaflow_2orch", "sagaflow"),
    ]
    present = [(label, a, b) for label, a, b in pairs if a in report and b in report]
    if present:
        table = Table(title="ratios (measured in the same run)")
        table.add_column("ratio", no_wrap=True)
        for column in ("sagas/s", "sagas/s, step 3 fails", "p50", f"p50 @{k}"):
            table.add_column(column, justify="right")
        for label, a, b in present:
            cells = []
            for key in ("throughput_per_s", "throughput_per_s_fail", "p50_ms", f"p50_ms_{k}"):
                x, y = report[a].get(key), report[b].get(key)
                cells.append(f"{x / y:.2f}x" if x is not None and y else "-")
            table.add_row(label, *cells)
        console.print(table)

    rounds = report.get("rounds")
    if rounds:
        table = Table(title=f"sagaflow against the chain, {len(rounds)} rounds one after another")
        table.add_column("round", justify="right")
        for column in ("chain sagas/s", "sagaflow sagas/s", "ratio"):
            table.add_column(column, justify="right")
        for column in ("chain p50", "sagaflow p50", "ratio"):
            table.add_column(column, justify="right")
        for k, figures in enumerate(rounds, 1):
            cells = []
            for key in ("throughput_per_s", "p50_ms"):
                cells += [str(figures["chain"][key]), str(figures["sagaflow"][key])]
                cells.append(f"{figures['ratios'][key]:.2f}x")
            table.add_row(str(k), *cells)
        medians = report["ratios"]
        table.add_row(
            "median",
            "",
            "",
            f"{medians['sagaflow_vs_chain_throughput_per_s_median']:.2f}x",
            "",
            "",
            f"{medians['sagaflow_vs_chain_p50_ms_median']:.2f}x",
        )
        console.print(table)

    targets = report.get("ratios", {})
    rows = [
        ("SQLite throughput / PostgreSQL", "sqlite_vs_postgres_throughput", ">= 0.8x", True),
        (
            f"SQLite p99 / p50, {k} in flight",
            f"sagaflow_sqlite_p99_vs_p50_{k}_in_flight",
            "<= 10x",
            False,
        ),
        (
            f"PostgreSQL p99 / p50, {k} in flight",
            f"sagaflow_p99_vs_p50_{k}_in_flight",
            "<= 10x",
            False,
        ),
    ]
    rows = [row for row in rows if row[1] in targets]
    if rows:
        table = Table(title="targets")
        table.add_column("figure", no_wrap=True)
        for column in ("measured", "target", "met"):
            table.add_column(column, justify="right")
        for label, key, target, at_least in rows:
            value = targets[key]
            met = value >= 0.8 if at_least else value <= 10
            table.add_row(label, f"{value:.2f}x", target, "yes" if met else "no")
        console.print(table)

    scale = report.get("scale")
    if scale:
        base = report.get("sagaflow", {}).get("throughput_per_s")
        table = Table(
            title=f"sagaflow (PostgreSQL) with finished sagas already stored; "
            f"{report['sagas']} sagas per run, 200 reads each"
        )
        for column in (
            "stored sagas",
            "sagas/s",
            "vs. main run",
            "status p50 ms",
            "status p99 ms",
            "list p50 ms",
            "list p99 ms",
        ):
            table.add_column(column, justify="right")
        for row in scale:
            table.add_row(
                f"{row['stored_sagas']:,}",
                str(row["throughput_per_s"]),
                f"{row['throughput_per_s'] / base:.2f}x" if base else "-",
                str(row["status_p50_ms"]),
                str(row["status_p99_ms"]),
                str(row["list_p50_ms"]),
                str(row["list_p99_ms"]),
            )
        console.print(table)


if __name__ == "__main__":
    raise SystemExit(main())
