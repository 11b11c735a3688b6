"""What a flood of forged callbacks costs: N of them against one running saga, sent through the
broker to an orchestrator worker on a PostgreSQL store.

    python benchmarks/forged_flood.py                 # 100,000 forged callbacks
    python benchmarks/forged_flood.py --count 2000 --out /tmp/flood.json

The saga (`flood_target`, defined here) has one step sent to a queue nobody consumes, so it
stays running with its step executing: the step every callback claims to report on. Half are
success callbacks from a task that is not the step's, half failures naming no task; the
orchestrator must ignore every one. The sender keeps at most --backlog of them queued (the
flood is as fast as the orchestrator takes it, without filling Redis). Figures: the saga's
history rows (bounded: the rows before the flood plus IGNORED_IN_HISTORY), the ignored count,
callbacks per second, the lines the flood added to the orchestrator's log, and the
orchestrator's RSS (its main process and pool processes, VmRSS from /proc) before, during and
after. Exits 1 if the history is over its bound or the count is not N.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.compare import add_connection_args, create_database, drop_database  # noqa: E402
from sagaflow import Saga, Step, StepStatus  # noqa: E402
from sagaflow.client.saga_client import SagaClient  # noqa: E402
from sagaflow.config import Settings  # noqa: E402
from sagaflow.core.machine import SagaRecord  # noqa: E402
from sagaflow.core.protocol import STEP_FAILED_TASK, STEP_SUCCEEDED_TASK, outcome_kwargs  # noqa: E402
from sagaflow.core.vocabulary import HistoryEvent  # noqa: E402
from sagaflow.devstack.processes import WorkerGroup, WorkerSpec  # noqa: E402
from sagaflow.store.factory import open_store  # noqa: E402
from sagaflow.store.protocol import IGNORED_IN_HISTORY, SagaStore  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 120)
NOBODY = "forged-flood-nobody"  # no worker consumes this queue

# Loaded by the orchestrator (SAGAFLOW_DEFINITIONS=benchmarks.forged_flood).
flood_target = Saga("flood_target", steps=[Step("held", "flood.hold", queue=NOBODY)])


def rss_kb(pid: int) -> dict[str, int]:
    """VmRSS of a process and of each of its children (a prefork worker's pool), in kB."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    found = {}
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                found["main" if p == pid else f"pool {p}"] = int(line.split()[1])
    return found


def mb(sample: dict[str, int]) -> float:
    return round(sum(sample.values()) / 1024, 1)


def dispatched(store: SagaStore, saga_id: str) -> SagaRecord:
    """The saga once its step is executing: the step every forged callback claims to be."""
    deadline = time.monotonic() + 60
    while (saga := store.load(saga_id)) is None or not (
        saga.steps and saga.steps[0].status is StepStatus.EXECUTING
    ):
        if time.monotonic() > deadline:
            raise SystemExit(f"saga {saga_id} never dispatched its step")
        time.sleep(0.05)
    return saga


def send_forged(
    client: SagaClient,
    store: SagaStore,
    saga_id: str,
    args: argparse.Namespace,
    orchestrator_pid: int,
    samples: list[dict[str, Any]],
) -> float:
    """Send the forged callbacks to the orchestrator's queue, at most --backlog ahead of it,
    sampling its RSS into `samples`; seconds until it had ignored every one."""
    queue = client.settings.queue
    claims = outcome_kwargs(saga_id, 0, "action", 1, "held")
    started = time.monotonic()
    last_sample = started
    ignored = 0
    for sent in range(1, args.count + 1):
        if sent % 2:
            client.app.send_task(
                STEP_SUCCEEDED_TASK,
                args=[{"forged": sent}],
                kwargs=claims,
                queue=queue,
            )
        else:
            error = {"type": "Forged", "message": f"forged failure {sent}"}
            client.app.send_task(STEP_FAILED_TASK, kwargs={**claims, "error": error}, queue=queue)
        while sent - ignored >= args.backlog or (sent == args.count and ignored < sent):
            time.sleep(0.2)
            ignored = store.ignored(saga_id).count
            if time.monotonic() - last_sample >= args.sample_every:
                samples.append(
                    {"sent": sent, "ignored": ignored, "rss_mb": mb(rss_kb(orchestrator_pid))}
                )
                last_sample = time.monotonic()
            if time.monotonic() - started > args.timeout:
                raise SystemExit(f"{ignored} of {sent} forged callbacks taken in time")
    return time.monotonic() - started


def flood(args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    database = f"forged_flood_{run_id}"
    database_url = create_database(args.postgres_url, database)
    logs = Path(os.environ.get("BENCH_LOGS", "/tmp/sagaflow-bench")) / f"forged-flood-{run_id}"
    redis.Redis.from_url(args.redis_url).flushdb()
    settings = Settings(
        home=logs / "home",
        broker_url=args.redis_url,
        database_url=database_url,
        definitions=("benchmarks.forged_flood",),
    )
    store = open_store(database_url)
    store.upgrade()
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}
    client = SagaClient(settings, store=store)
    level = os.environ.get("BENCH_LOG_LEVEL", "warning")
    spec = WorkerSpec(
        "orchestrator",
        "sagaflow.worker",
        [settings.queue],
        pool=args.pool,
        concurrency=args.concurrency,
        extra_args=["-l", level],
    )
    try:
        with WorkerGroup(env, logs, cwd=ROOT) as group:
            orchestrator = group.start(spec)
            group.wait_ready(client.app)
            saga_id = client.start("flood_target", {})
            saga = dispatched(store, saga_id)
            rows_before = len(store.history(saga_id))
            version_before = saga.version
            log_before = orchestrator.log_path.stat().st_size
            pid = orchestrator.process.pid
            before = rss_kb(pid)
            samples = [{"sent": 0, "ignored": 0, "rss_mb": mb(before)}]
            elapsed = send_forged(client, store, saga_id, args, pid, samples)
            during = [s["rss_mb"] for s in samples[1:]] or [mb(before)]
            after = rss_kb(pid)
            history = store.history(saga_id)
            with open(orchestrator.log_path, "rb") as log:
                log.seek(log_before)
                added = log.read().decode(errors="replace")
            counted = store.ignored(saga_id)
            saga = store.get(saga_id)
            return {
                "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                "forged_callbacks": args.count,
                "pool": f"{args.pool} -c {args.concurrency}",
                "log_level": level,
                "ignored_count": counted.count,
                "ignored_by_step": [
                    {"step": c.step, "outcome": c.outcome, "count": c.count}
                    for c in counted.by_step
                ],
                "history_rows_before": rows_before,
                "history_rows": len(history),
                "history_rows_bound": rows_before + IGNORED_IN_HISTORY,
                "outcome_ignored_rows": sum(
                    h.event == HistoryEvent.OUTCOME_IGNORED for h in history
                ),
                "saga_state": saga.state.value,
                "saga_version_before": version_before,
                "saga_version": saga.version,
                "elapsed_s": round(elapsed, 1),
                "callbacks_per_s": round(args.count / elapsed, 1),
                "log_lines_added": len(added.splitlines()),
                "log_lines_about_the_saga": sum(saga_id in line for line in added.splitlines()),
                "rss_mb_before": mb(before),
                "rss_mb_during_max": max(during),
                "rss_mb_after": mb(after),
                "rss_kb_before": before,
                "rss_kb_after": after,
                "samples": samples,
            }
    finally:
        client.close()
        store.dispose()
        drop_database(args.postgres_url, database)


def print_report(report: dict[str, Any]) -> None:
    table = Table(title=f"{report['forged_callbacks']:,} forged callbacks against one saga")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for label, key in (
        ("ignored count", "ignored_count"),
        ("history rows (before the flood)", "history_rows_before"),
        ("history rows (after)", "history_rows"),
        ("history rows bound", "history_rows_bound"),
        ("outcome_ignored rows", "outcome_ignored_rows"),
        ("saga state, version", None),
        ("callbacks/s", "callbacks_per_s"),
        ("elapsed s", "elapsed_s"),
        ("orchestrator log lines added (level)", None),
        ("  of them about the saga", "log_lines_about_the_saga"),
        ("orchestrator RSS MB before", "rss_mb_before"),
        ("orchestrator RSS MB during (max)", "rss_mb_during_max"),
        ("orchestrator RSS MB after", "rss_mb_after"),
    ):
        if key is not None:
            value = report[key]
        elif label.startswith("saga"):
            value = f"{report['saga_state']}, {report['saga_version']}"
        else:
            value = f"{report['log_lines_added']} ({report['log_level']})"
        table.add_row(label, f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)
    samples = Table(title=f"RSS while the flood ran ({report['pool']})")
    for column in ("sent", "ignored", "RSS MB"):
        samples.add_column(column, justify="right")
    every = report["samples"]
    shown = sorted({round(i * (len(every) - 1) / 11) for i in range(12)})  # the JSON has all
    for sample in (every[i] for i in shown):
        samples.add_row(f"{sample['sent']:,}", f"{sample['ignored']:,}", str(sample["rss_mb"]))
    console.print(samples)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100_000, help="forged callbacks to send")
    parser.add_argument("--backlog", type=int, default=2_000, help="most callbacks queued")
    parser.add_argument("--pool", default="prefork", help="the orchestrator's Celery pool")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for the flood")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    add_connection_args(parser)
    args = parser.parse_args()
    if args.count < 1 or args.backlog < 1:
        parser.error("--count and --backlog must be at least 1")
    report = flood(args)
    print_report(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"raw figures: {args.out}")
    bounded = report["history_rows"] <= report["history_rows_bound"]
    if not bounded or report["ignored_count"] != args.count:
        console.print("[red]the history is over its bound or the count is wrong[/red]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
