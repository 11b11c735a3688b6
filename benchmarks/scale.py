"""Does the cost of reading a saga grow with history? Status, list and search latency with N
finished sagas already in a PostgreSQL store.

    python benchmarks/scale.py                     # 10,000 and 1,000,000 stored sagas
    python benchmarks/scale.py --sizes 10000

Stored sagas are generated in SQL (generate_series), each with 5 steps and 12 history rows, a
third of them failed. Figures: p50/p99 of `SagaStore.get(id)` (what `sagaflow status` runs) and
of `list_sagas(state=..., limit=50)` (what `sagaflow list --state` runs), of the search
`sagaflow list --where order_id=N` (one match among all) and `--where customer=c-N` (one saga in
a thousand matches, newest 50 shown), over 200 calls each; and the seconds the search index
(migration 0011) takes to build on that many sagas.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.compare import create_database, drop_database, percentile  # noqa: E402
from sagaflow.core.search import parse_where  # noqa: E402
from sagaflow.store.factory import open_store  # noqa: E402

console = Console()

SEED = """
INSERT INTO sagaflow_sagas (id, saga_type, state, data, current_step, version, error,
                            created_at, updated_at, finished_at)
SELECT 'seed-' || g, 'order', CASE WHEN g % 3 = 0 THEN 'failed' ELSE 'completed' END,
       jsonb_build_object('order_id', g, 'customer', 'c-' || (g % 1000)), NULL, 6, NULL,
       now() - (g || ' seconds')::interval, now() - (g || ' seconds')::interval,
       now() - (g || ' seconds')::interval
FROM generate_series(CAST(:start AS integer), CAST(:stop AS integer)) AS g;
INSERT INTO sagaflow_steps (saga_id, position, name, action, compensation, queue,
                            compensation_queue, compensate_on_failure, status, result, attempts,
                            compensation_attempts, task_id, started_at, finished_at)
SELECT 'seed-' || g, p, 's' || p, 'svc.act', 'svc.undo', 'q', 'q', false,
       CASE WHEN g % 3 = 0 THEN 'compensated' ELSE 'completed' END, '{"ok": true}'::jsonb, 1,
       0, 'seed-' || g || '.' || p || '.action.1', now(), now()
FROM generate_series(CAST(:start AS integer), CAST(:stop AS integer)) AS g,
     generate_series(0, 4) AS p;
INSERT INTO sagaflow_history (saga_id, at, event, from_state, to_state, step)
SELECT 'seed-' || g, now(), 'step_completed', 'pending', 'pending', 's' || (h % 5)
FROM generate_series(CAST(:start AS integer), CAST(:stop AS integer)) AS g,
     generate_series(1, 12) AS h;
"""


def seed(url: str, total: int, already: int) -> float:
    """Add sagas until `total` are stored; seconds taken."""
    started = time.perf_counter()
    engine = sa.create_engine(url)
    batch = 100_000
    for start in range(already + 1, total + 1, batch):
        stop = min(total, start + batch - 1)
        with engine.begin() as conn:
            for statement in SEED.split(";"):
                if statement.strip():
                    conn.execute(sa.text(statement), {"start": start, "stop": stop})
    with engine.connect() as conn:
        conn.execute(sa.text("ANALYZE"))
    engine.dispose()
    return time.perf_counter() - started


def index_build_seconds(url: str) -> float:
    """Build the search index again, as migration 0011 does on a table that has these sagas."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_sagaflow_sagas_data"))
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE INDEX ix_sagaflow_sagas_data "
                "ON sagaflow_sagas USING gin (data jsonb_path_ops)"
            )
        )
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds


def timed(call: Any, runs: int = 200) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return round(percentile(samples, 50), 2), round(percentile(samples, 99), 2)


def timed_search(store: Any, where: Any) -> tuple[float, float]:
    """`sagaflow list --where ...` with a new value each call, as the CLI parses it."""
    searches = iter([[parse_where(where())] for _ in range(200)])
    return timed(lambda: store.list_sagas(where=next(searches), limit=50))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/scale.json")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    name = f"sagaflow_scale_{uuid.uuid4().hex[:8]}"
    url = create_database(args.postgres_url, name)
    rows: list[dict[str, Any]] = []
    try:
        store = open_store(url)
        store.upgrade()
        stored = 0
        for size in sizes:
            with console.status(f"storing {size:,} finished sagas"):
                seconds = seed(url, size, stored)
            stored = size
            ids = [f"seed-{random.randint(1, size)}" for _ in range(200)]
            pick = iter(ids * 2)
            store.get(ids[0])  # connect
            status = timed(lambda pick=pick: store.get(next(pick)))
            listing = timed(lambda: store.list_sagas(state="failed", limit=50))
            by_order = timed_search(store, lambda n=size: f"order_id={random.randint(1, n)}")
            by_customer = timed_search(store, lambda: f"customer=c-{random.randrange(1000)}")
            build = index_build_seconds(url)
            rows.append(
                {
                    "stored_sagas": size,
                    "seed_seconds": round(seconds, 1),
                    "status_p50_ms": status[0],
                    "status_p99_ms": status[1],
                    "list_p50_ms": listing[0],
                    "list_p99_ms": listing[1],
                    "where_order_p50_ms": by_order[0],
                    "where_order_p99_ms": by_order[1],
                    "where_customer_p50_ms": by_customer[0],
                    "where_customer_p99_ms": by_customer[1],
                    "index_build_seconds": round(build, 4),
                }
            )
        store.dispose()
    finally:
        drop_database(args.postgres_url, name)
    table = Table(title="reading sagas with history in the store (PostgreSQL)")
    columns = {
        "status p50/p99 ms": ("status_p50_ms", "status_p99_ms"),
        "list p50/p99 ms": ("list_p50_ms", "list_p99_ms"),
        "where order_id p50/p99 ms": ("where_order_p50_ms", "where_order_p99_ms"),
        "where customer p50/p99 ms": ("where_customer_p50_ms", "where_customer_p99_ms"),
    }
    table.add_column("stored sagas", justify="right")
    for column in columns:
        table.add_column(column, justify="right")
    table.add_column("index build s", justify="right")
    for row in rows:
        table.add_row(
            f"{row['stored_sagas']:,}",
            *(f"{row[p50]} / {row[p99]}" for p50, p99 in columns.values()),
            str(row["index_build_seconds"]),
        )
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
