"""Where a saga's time and CPU go: sagaflow against the plain chain (and DBOS), part by part.

    python benchmarks/breakdown.py                          # 50 single sagas, 600 at once
    python benchmarks/breakdown.py --single 20 --sagas 200 --contenders sagaflow,chain

The same workers, settings and workload as benchmarks/compare.py (5 no-op steps, Redis broker,
PostgreSQL store, prefork workers of 2 processes), measured three ways:

- path: one saga at a time on an idle system. Every process timestamps Celery's task signals
  (benchmarks/probe.py, loaded into the workers with `celery worker -I`), and each saga's
  critical path, from the producer's call to the benchmark seeing the outcome, is cut into
  parts: the producer, sending messages, broker to worker, worker to pool process, and the task
  bodies. Mean ms per saga; the parts add up to the total.
- CPU: N sagas enqueued at once; the CPU time of each of this run's processes (from /proc:
  the workers it started, the PostgreSQL backends of its database, its Redis) per saga, by role.
- in process: sagaflow's own work without Celery's workers. The orchestrator's start and step
  outcomes are called in the benchmark process against the same store and broker; CPU ms per
  call and per saga. The rest of the orchestrator worker's CPU is Celery's.

Raw figures go to benchmarks/results/breakdown.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks import compare  # noqa: E402
from benchmarks.compare import (  # noqa: E402
    ChainContender,
    Contender,
    DbosContender,
    SagaflowContender,
    add_connection_args,
    chosen_contenders,
    console,
    create_database,
    drop_database,
    machine,
)
from sagaflow.config import Settings  # noqa: E402

CONTENDERS = ("sagaflow", "chain", "dbos")
TIMED = ("sagaflow", "chain")  # DBOS sends no Celery messages: CPU only
TICKS_PER_S = os.sysconf("SC_CLK_TCK")

PRODUCER = "producer, until its message is sent"
SENDING = "sending messages"
BROKER = "broker to worker (main process)"
POOL = "worker main process to pool process"
ORCHESTRATOR = "orchestrator tasks before the last (store, state machine, next message)"
STEPS = "step tasks (body, next message)"
LAST = "last task, until the benchmark sees the outcome"
PARTS = (PRODUCER, SENDING, BROKER, POOL, ORCHESTRATOR, STEPS, LAST)

BENCHMARK_PROCESS = "benchmark process (producer; DBOS itself)"
ROLES = (
    "orchestrator worker, main process",
    "orchestrator worker, pool processes",
    "service worker, main process",
    "service worker, pool processes",
    "PostgreSQL",
    "Redis",
    BENCHMARK_PROCESS,
)

IN_PROCESS_START = "start (promote the request, send step 1)"
IN_PROCESS_OUTCOME = "a step outcome (apply to the remembered saga, write, send the next)"


# -- the path of one saga ------------------------------------------------------------------------


@dataclass
class Marks:
    """What the probe saw of one task: times in ns, and the pool process that ran it."""

    name: str = "-"
    at: dict[str, int] = field(default_factory=dict)
    run_pid: int | None = None
    publish_pid: int | None = None


Row = tuple[int, int, str, str, str]  # ns, pid, kind, task name, task id


def read_probe(path: Path) -> list[Row]:
    rows = []
    for line in path.read_text().splitlines():
        ns, pid, kind, name, task_id = line.split(" ", 4)
        rows.append((int(ns), int(pid), kind, name, task_id))
    return sorted(rows)


def saga_windows(rows: list[Row]) -> list[tuple[int, int]]:
    """When each saga began and ended: each `start` mark and the `done` mark after it."""
    windows: list[tuple[int, int]] = []
    began: int | None = None
    for ns, _pid, kind, _name, _task_id in rows:
        if kind == "start":
            began = ns
        elif kind == "done" and began is not None:
            windows.append((began, ns))
            began = None
    return windows


def task_marks(rows: list[Row]) -> dict[str, Marks]:
    """Every task's marks, by task id, from the whole probe file: a sender descheduled between
    its write and its `published` mark may take that mark after the saga is over, outside the
    saga's window, and the task is on the saga's path all the same."""
    tasks: dict[str, Marks] = {}
    for ns, pid, kind, name, task_id in rows:
        if task_id == "-":
            continue
        marks = tasks.setdefault(task_id, Marks())
        marks.name = name if name != "-" else marks.name
        marks.at.setdefault(kind, ns)
        if kind == "run":
            marks.run_pid = pid
        elif kind == "publish":
            marks.publish_pid = pid
    return tasks


class MissingMark(RuntimeError):
    """A task on a saga's path has no record of one of its marks (yet)."""


def critical_path(window: tuple[int, int], tasks: dict[str, Marks]) -> tuple[dict[str, float], int]:
    """One saga's time in ms by part, and the number of tasks on its path. The path follows
    each task to the message its pool process sent while running it (the next step, the
    outcome callback, the next link of the chain). It is one timeline of marks, each caused by
    the one before, a part being the time from one mark to the next: the parts add up to the
    saga's time. A sender's `published` does not cause the worker's `received` (a sender
    descheduled after its write marks it later), so a send ends at whichever came first."""
    start, done = window
    sent = sorted(
        (m.at["publish"], task_id)
        for task_id, m in tasks.items()
        if start <= m.at.get("publish", -1) <= done
    )
    if not sent:
        raise RuntimeError("no task message recorded between a start and its outcome")
    timeline: list[tuple[str, int]] = []  # (the part that ends at this mark, the mark)
    first_at, current = sent[0]
    timeline.append((PRODUCER, first_at))
    hops = 0
    while True:
        m = tasks[current]
        missing = {"publish", "published", "received", "run"} - set(m.at)
        if missing:
            raise MissingMark(f"task {m.name} {current}: no {', '.join(sorted(missing))} record")
        hops += 1
        timeline.append((SENDING, min(m.at["published"], m.at["received"])))
        timeline.append((BROKER, m.at["received"]))
        timeline.append((POOL, m.at["run"]))
        ended = m.at.get("ran", done)
        following = [
            (at, task_id)
            for at, task_id in sent
            if m.at["run"] <= at <= ended and tasks[task_id].publish_pid == m.run_pid
        ]
        if not following:
            timeline.append((LAST, done))
            return parts_of(start, timeline), hops
        next_at, current = following[0]
        timeline.append((ORCHESTRATOR if m.name.startswith("sagaflow.") else STEPS, next_at))


def parts_of(start: int, timeline: list[tuple[str, int]]) -> dict[str, float]:
    """ms by part along a timeline; a mark before the one it follows is refused, not clipped:
    with one monotonic clock it cannot happen, and a figure made of it would be wrong."""
    parts: defaultdict[str, float] = defaultdict(float)
    previous = start
    for part, at in timeline:
        if at < previous:
            raise RuntimeError(
                f"{part}: a mark {(previous - at) / 1e6:.3f} ms before the one it follows"
            )
        parts[part] += (at - previous) / 1e6
        previous = at
    return dict(parts)


MARKS_DEADLINE = 30.0


def recorded_paths(
    contender: Contender, probe_file: Path, runs: int
) -> list[tuple[dict[str, float], int]]:
    """Each saga's critical path, once every process wrote its marks: a sender writes its
    `published` after its publish returns, which can be after the saga finished (a loaded
    machine deschedules it), so the file is read again until the marks are all there."""
    deadline = time.monotonic() + MARKS_DEADLINE
    while True:
        rows = read_probe(probe_file)
        windows = saga_windows(rows)
        if len(windows) != runs:
            raise RuntimeError(f"{contender.name}: {len(windows)} sagas recorded of {runs}")
        tasks = task_marks(rows)
        try:
            return [critical_path(w, tasks) for w in windows]
        except MissingMark:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # poll: the late writers are processes of their own


def measure_path(contender: Contender, probe_file: Path, runs: int) -> dict[str, Any]:
    from benchmarks import probe

    contender.run(min(20, runs), False)  # warm up: connections, imports, first queries
    probe_file.write_text("")
    totals = []
    for _ in range(runs):
        probe.record("start")
        seconds, _states = contender.run(1, False)
        probe.record("done")
        totals.append(seconds * 1000)
    paths = recorded_paths(contender, probe_file, runs)
    hops = {h for _parts, h in paths}
    if len(hops) != 1:
        raise RuntimeError(f"{contender.name}: sagas took {sorted(hops)} tasks on their path")
    result: dict[str, Any] = {
        part: round(statistics.fmean(p.get(part, 0.0) for p, _h in paths), 2) for part in PARTS
    }
    result["total_ms"] = round(sum(result[part] for part in PARTS), 2)
    result["p50_ms"] = round(statistics.median(totals), 2)
    result["tasks_on_path"] = hops.pop()
    result["sagas"] = len(paths)
    return result


# -- CPU by process ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Process:
    cmdline: str
    ppid: int
    cpu_s: float


def processes() -> dict[int, Process]:
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # exited meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime + stime
        found[int(entry)] = Process(cmdline, int(fields[1]), cpu)
    return found


@dataclass(frozen=True)
class Scope:
    """Which processes of the machine are this run's: the workers it started, the PostgreSQL
    backends serving its database, its Redis server. Anything else running on the machine (a
    second benchmark, a test suite) is left out of the figures."""

    database: str
    redis_port: int | None
    root: int = field(default_factory=os.getpid)

    def descends(self, pid: int, table: dict[int, Process]) -> bool:
        seen = 0
        while pid in table and seen < 64:
            if pid == self.root:
                return True
            pid, seen = table[pid].ppid, seen + 1
        return False


def role(pid: int, table: dict[int, Process], scope: Scope) -> str | None:
    process = table[pid]
    program = process.cmdline.split(" ", 1)[0]
    if "postgres" in program:
        # A backend shows its database; the server's shared processes are left out.
        return "PostgreSQL" if f" {scope.database}" in process.cmdline else None
    if "redis-server" in program:
        return "Redis" if scope.redis_port and f":{scope.redis_port}" in process.cmdline else None
    if not scope.descends(pid, table):
        return None
    for marker, label in (("orchestrator", "orchestrator worker"), ("bench@", "service worker")):
        if marker in process.cmdline and " worker " in process.cmdline:
            parent = table.get(process.ppid)
            pool = parent is not None and parent.cmdline == process.cmdline
            return f"{label}, {'pool processes' if pool else 'main process'}"
    return None


def measure_cpu(contender: Contender, n: int, scope: Scope) -> dict[str, Any]:
    contender.run(min(20, n), False)  # warm up
    before = processes()
    own = time.process_time()
    seconds, states = contender.run(n, False)
    own = time.process_time() - own
    after = processes()
    if states.count("completed") != n:
        raise RuntimeError(f"{contender.name}: expected {n} completed, got {states[:5]}...")
    by_role: defaultdict[str, float] = defaultdict(float)
    for pid, process in after.items():
        if pid in before and (label := role(pid, after, scope)) is not None:
            by_role[label] += process.cpu_s - before[pid].cpu_s
    by_role[BENCHMARK_PROCESS] = own
    result: dict[str, Any] = {label: round(by_role[label] * 1000 / n, 1) for label in ROLES}
    total = sum(by_role.values())
    result["total_ms"] = round(total * 1000 / n, 1)
    result["throughput_per_s"] = round(n / seconds, 1)
    result["cores_busy"] = round(total / seconds, 2)
    result["sagas"] = states.count("completed")
    return result


# -- sagaflow's own work ---------------------------------------------------------------------------


def measure_in_process(redis_url: str, database_url: str, n: int) -> dict[str, Any]:
    """The orchestrator's own CPU per saga, without Celery's workers around it: its start and
    its step outcomes called in this process, against the same PostgreSQL and Redis. What they
    send is never consumed; main flushes the broker's database afterwards."""
    from sagaflow.client.saga_client import SagaClient
    from sagaflow.core.definitions import Phase, SagaState
    from sagaflow.core.records import StepSucceeded
    from sagaflow.messaging.orchestrator_app import create_orchestrator_app, orchestrator_of

    settings = Settings(
        broker_url=redis_url, database_url=database_url, definitions=("benchmarks.bench_sagas",)
    )
    orchestrator = orchestrator_of(create_orchestrator_app(settings))
    client = SagaClient(settings, store=orchestrator.store)
    spent = {IN_PROCESS_START: 0.0, IN_PROCESS_OUTCOME: 0.0}
    outcomes = 0

    def one_saga(timed: bool) -> None:
        nonlocal outcomes
        saga_id = client.start("bench5", {})  # recorded as requested, as producers do
        started = time.process_time()
        orchestrator.start(saga_id, "bench5", {})
        if timed:
            spent[IN_PROCESS_START] += time.process_time() - started
        for position in range(len(orchestrator.store.get(saga_id).steps)):
            task_id = orchestrator.store.get(saga_id).steps[position].task_id
            started = time.process_time()
            moved = orchestrator.handle(
                saga_id, StepSucceeded(position, Phase.ACTION, 1, None, task_id)
            )
            if timed:
                spent[IN_PROCESS_OUTCOME] += time.process_time() - started
                outcomes += 1
            if not moved:
                raise RuntimeError(f"in process: the outcome of step {position} was ignored")
        if orchestrator.store.get(saga_id).state is not SagaState.COMPLETED:
            raise RuntimeError(f"in process: saga {saga_id} did not complete")

    for _ in range(min(20, n)):  # warm up
        one_saga(timed=False)
    for _ in range(n):
        one_saga(timed=True)
    client.close()
    start_ms = spent[IN_PROCESS_START] * 1000 / n
    outcome_ms = spent[IN_PROCESS_OUTCOME] * 1000 / outcomes
    return {
        IN_PROCESS_START: round(start_ms, 2),
        IN_PROCESS_OUTCOME: round(outcome_ms, 2),
        "per_saga_ms": round(start_ms + outcome_ms * outcomes / n, 1),
        "outcomes_per_saga": outcomes // n,
        "sagas": n,
    }


# -- running -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--single", type=int, default=50, help="sagas timed one at a time")
    parser.add_argument("--sagas", type=int, default=600, help="sagas at once for the CPU")
    parser.add_argument(
        "--in-process", type=int, default=200, help="sagas run in process (sagaflow's own CPU)"
    )
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    add_connection_args(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/breakdown.json")
    args = parser.parse_args()
    contenders = chosen_contenders(parser, args.contenders, CONTENDERS)

    logs = Path(os.environ.get("BENCH_LOGS", "/tmp/sagaflow-bench")) / "breakdown"
    logs.mkdir(parents=True, exist_ok=True)
    probe_file = logs / "probe.log"
    # Read by the probe at import, here and in every worker (they inherit the environment).
    os.environ["BENCH_PROBE_FILE"] = str(probe_file)
    os.environ["SAGAFLOW_BROKER_URL"] = args.redis_url  # for the chain's producer app
    compare.WORKER_INCLUDES.append("benchmarks.probe")
    r = redis.Redis.from_url(args.redis_url)
    r.flushdb()
    run_id = uuid.uuid4().hex[:8]
    paths: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    in_process: dict[str, Any] = {}

    for name in contenders:
        database = f"{name}_breakdown_{run_id}"
        url = create_database(args.postgres_url, database) if name != "chain" else None
        contender: Contender
        try:
            if name == "sagaflow":
                assert url is not None
                contender = SagaflowContender(name, args.redis_url, url, logs / name)
            elif name == "chain":
                settings = Settings(home=logs / "home", broker_url=args.redis_url)
                contender = ChainContender(args.redis_url, logs / name, settings)
            else:
                assert url is not None
                contender = DbosContender(url)
            try:
                if name in TIMED:
                    with console.status(f"{name}: {args.single} sagas one at a time"):
                        paths[name] = measure_path(contender, probe_file, args.single)
                with console.status(f"{name}: CPU of {args.sagas} sagas at once"):
                    scope = Scope(
                        database,
                        redis_port=redis.Redis.from_url(
                            args.redis_url
                        ).connection_pool.connection_kwargs.get("port"),
                    )
                    cpu[name] = measure_cpu(contender, args.sagas, scope)
            finally:
                contender.close()
            if name == "sagaflow":
                assert url is not None
                with console.status(f"sagaflow: {args.in_process} sagas in process"):
                    in_process = measure_in_process(args.redis_url, url, args.in_process)
                r.flushdb()
        finally:
            if url is not None:
                drop_database(args.postgres_url, database)

    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "single": args.single,
        "sagas": args.sagas,
        "in_process_sagas": args.in_process,
        "machine": machine(),
        "path": paths,
        "cpu": cpu,
        "in_process": in_process,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_tables(report)
    console.print(f"raw figures: {args.out}")
    return 0


def print_tables(report: dict[str, Any]) -> None:
    paths = report["path"]
    if paths:
        table = Table(
            title=f"one saga at a time, mean ms along its path over {report['single']} sagas"
        )
        table.add_column("part", no_wrap=True)
        for name in paths:
            table.add_column(name, justify="right")
        for part in PARTS:
            table.add_row(part, *(f"{paths[name][part]:.2f}" for name in paths))
        table.add_row("total", *(f"{paths[name]['total_ms']:.2f}" for name in paths))
        table.add_row("p50, end to end", *(f"{paths[name]['p50_ms']:.2f}" for name in paths))
        table.add_row("tasks on the path", *(str(paths[name]["tasks_on_path"]) for name in paths))
        console.print(table)
    cpu = report["cpu"]
    if cpu:
        table = Table(title=f"CPU ms per saga, {report['sagas']} sagas enqueued at once")
        table.add_column("process", no_wrap=True)
        for name in cpu:
            table.add_column(name, justify="right")
        for label in ROLES:
            table.add_row(label, *(f"{cpu[name][label]:.1f}" for name in cpu))
        table.add_row("total", *(f"{cpu[name]['total_ms']:.1f}" for name in cpu))
        table.add_row("sagas/s", *(f"{cpu[name]['throughput_per_s']:.1f}" for name in cpu))
        table.add_row("cores busy", *(f"{cpu[name]['cores_busy']:.2f}" for name in cpu))
        console.print(table)
    own = report["in_process"]
    if own:
        table = Table(
            title=f"sagaflow's own CPU ms, in process, over {report['in_process_sagas']} sagas"
        )
        table.add_column("call", no_wrap=True)
        table.add_column("sagaflow", justify="right")
        table.add_row(IN_PROCESS_START, f"{own[IN_PROCESS_START]:.2f}")
        table.add_row(IN_PROCESS_OUTCOME, f"{own[IN_PROCESS_OUTCOME]:.2f}")
        table.add_row(
            f"per saga (start and {own['outcomes_per_saga']} outcomes)", f"{own['per_saga_ms']:.1f}"
        )
        console.print(table)


if __name__ == "__main__":
    raise SystemExit(main())
