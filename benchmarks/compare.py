"""sagaflow against a plain Celery chain and DBOS Transact, measured in one run on one machine.

    python benchmarks/compare.py                  # 1,000 sagas, 200 latency runs
    python benchmarks/compare.py --sagas 100 --latency-runs 20 --contenders sagaflow,chain

Workload: 5 no-op steps per saga (and a variant where step 3 fails, so 2 compensations run).
Redis broker, PostgreSQL store, one orchestrator worker and one service worker, both prefork -c 2;
the chain runs on a stock Celery worker (benchmarks/chain_tasks.py) with the same settings.
Figures: end-to-end throughput for N sagas enqueued at once, single-saga latency on an idle
system (p50, p99), messages published and SQL commits per saga, orchestrator RSS. Raw figures go
to benchmarks/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from sagaflow.client import SagaClient  # noqa: E402
from sagaflow.config import Settings  # noqa: E402
from sagaflow.processes import WorkerGroup, WorkerSpec  # noqa: E402
from sagaflow.store import SagaStore  # noqa: E402

console = Console()
EVENTS_QUEUE = "bench-saga-events"


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


def worker_spec(name: str, app: str, queue: str) -> WorkerSpec:
    """Every contender's workers: prefork, 2 processes."""
    level = os.environ.get("BENCH_LOG_LEVEL", "warning")
    return WorkerSpec(name, app, [queue], pool="prefork", concurrency=2, extra_args=["-l", level])


# -- sagaflow ------------------------------------------------------------------------------------


class SagaflowContender:
    name = "sagaflow"

    def __init__(self, redis_url: str, database_url: str, logs: Path) -> None:
        self.redis_url = redis_url
        self.database_url = database_url
        self.settings = Settings(
            home=logs / "home",
            broker_url=redis_url,
            database_url=database_url,
            definitions=("benchmarks.bench_sagas",),
        )
        self.store = SagaStore(database_url)
        self.store.upgrade()
        env = {
            **os.environ,
            **self.settings.to_env(),
            "PYTHONPATH": str(ROOT),
            "BENCH_SIGNAL_URL": redis_url,
        }
        self.group = WorkerGroup(env, logs, cwd=ROOT)
        self.client = SagaClient(self.settings, store=self.store)
        self.orchestrator = self.group.start(
            worker_spec("orchestrator", "sagaflow.worker", "sagaflow")
        )
        self.group.start(worker_spec("bench", "benchmarks.bench_tasks", "bench"))
        self.group.wait_ready(self.client.app)
        from kombu import Connection, Exchange, Queue

        self.connection = Connection(redis_url)
        exchange = Exchange(self.settings.events_exchange, type="topic", durable=True)
        self.events = Queue(EVENTS_QUEUE, exchange=exchange, routing_key="bench5.#")(
            self.connection.default_channel
        )
        self.events.declare()
        self.events.purge()

    def run(self, n: int, fail: bool) -> tuple[float, list[str]]:
        """Start n sagas at once; seconds until all of them reported an outcome."""
        data = {"fail_at": "s3"} if fail else {}
        started = time.perf_counter()
        ids = {self.client.start("bench5", data) for _ in range(n)}
        pending = set(ids)
        states: list[str] = []
        deadline = time.monotonic() + 300
        while pending:
            message = self.events.get(no_ack=True)
            if message is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(pending)} sagas never finished")
                time.sleep(0.001)
                continue
            payload = message.decode()
            if payload["saga_id"] in pending:
                pending.discard(payload["saga_id"])
                states.append(payload["state"])
        return time.perf_counter() - started, states

    def close(self) -> None:
        self.events.delete()
        self.connection.release()
        self.group.stop()
        self.store.dispose()


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
        deadline = time.monotonic() + 300
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
    contender: Any, n: int, latency_runs: int, commits_of: Callable[[], int] | None, r: redis.Redis
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sagas", type=int, default=1000)
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--contenders", default="sagaflow,chain,dbos")
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/latest.json")
    args = parser.parse_args()
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]

    os.environ["SAGAFLOW_BROKER_URL"] = args.redis_url  # for the chain's producer app
    r = redis.Redis.from_url(args.redis_url)
    r.flushdb()
    logs = Path(os.environ.get("BENCH_LOGS", "/tmp/sagaflow-bench"))
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    run_id = uuid.uuid4().hex[:8]
    settings = Settings(home=logs / "home", broker_url=args.redis_url)

    if "chain" in contenders:
        chain = ChainContender(args.redis_url, logs / "chain", settings)
        try:
            results["chain"] = measure(chain, args.sagas, args.latency_runs, None, r)
        finally:
            chain.close()
    if "sagaflow" in contenders:
        name = f"sagaflow_bench_{run_id}"
        url = create_database(args.postgres_url, name)
        flow = SagaflowContender(args.redis_url, url, logs / "sagaflow")
        try:
            results["sagaflow"] = measure(
                flow, args.sagas, args.latency_runs, lambda: commits(url), r
            )
            results["sagaflow"]["orchestrator_rss_mb"] = round(
                rss_mb(flow.orchestrator.process.pid), 1
            )
            results["sagaflow"]["sql_writes_per_saga"] = results["sagaflow"]["sql_commits_per_saga"]
        finally:
            flow.close()
            drop_database(args.postgres_url, name)
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

    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sagas": args.sagas,
        "latency_runs": args.latency_runs,
        "machine": machine(),
        **results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    console.print(f"raw figures: {args.out}")
    return 0


def print_table(report: dict[str, Any]) -> None:
    table = Table(
        title=f"{report['sagas']} sagas of 5 no-op steps; latency over "
        f"{report['latency_runs']} single sagas"
    )
    for column in (
        "contender",
        "sagas/s",
        "sagas/s (step 3 fails)",
        "p50 ms",
        "p99 ms",
        "messages/saga",
        "SQL commits/saga",
        "orchestrator RSS MB",
    ):
        table.add_column(column, justify="right")
    for name in ("sagaflow", "chain", "dbos"):
        if name not in report:
            continue
        row = report[name]
        table.add_row(
            name,
            str(row.get("throughput_per_s", "")),
            str(row.get("throughput_per_s_fail", "")),
            str(row.get("p50_ms", "")),
            str(row.get("p99_ms", "")),
            str(row.get("messages_per_saga", "-")),
            str(row.get("sql_commits_per_saga", "-")),
            str(row.get("orchestrator_rss_mb", "-")),
        )
    console.print(table)
    flow = report.get("sagaflow")
    if not flow:
        return
    ratios = Table(title="ratios (sagaflow / other)")
    ratios.add_column("against")
    ratios.add_column("throughput", justify="right")
    ratios.add_column("throughput, step 3 fails", justify="right")
    ratios.add_column("p50 latency", justify="right")
    for other in ("chain", "dbos"):
        if other in report:
            o = report[other]
            ratios.add_row(
                other,
                f"{flow['throughput_per_s'] / o['throughput_per_s']:.2f}x",
                f"{flow['throughput_per_s_fail'] / o['throughput_per_s_fail']:.2f}x",
                f"{flow['p50_ms'] / o['p50_ms']:.2f}x",
            )
    console.print(ratios)


if __name__ == "__main__":
    raise SystemExit(main())
