"""How long does starting sagas stall an asyncio event loop? SagaClient called in a handler
against AsyncSagaClient, with the broker up and with it down.

    python benchmarks/async_loop.py                   # Redis + PostgreSQL, 100 concurrent starts
    python benchmarks/async_loop.py --starts 30 --database-url sqlite:////tmp/s.db

A ticker coroutine wakes every millisecond; the longest gap between two of its wake-ups is the
longest the loop could not run anything else (1 ms is the floor). Each scenario starts its sagas
at once (asyncio.gather, as concurrent requests would) on a store of its own. Nothing consumes
the start messages: this is the producer's side alone. "Broker down" points the client at a
port where nothing listens; every start is still kept in the store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.compare import create_database, drop_database, percentile  # noqa: E402
from sagaflow import AsyncSagaClient, SagaClient, Settings  # noqa: E402
from sagaflow.store.factory import open_store  # noqa: E402

console = Console(width=120)
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/13"
RESULTS = ROOT / "benchmarks" / "results" / "async_loop.json"


@dataclass
class Figures:
    client: str
    broker: str
    starts: int
    longest_stall_ms: float
    p99_gap_ms: float
    seconds: float
    starts_per_second: float
    start_p50_ms: float
    start_max_ms: float


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def measure(starts: int, start_one: Callable[[int], Awaitable[None]]) -> Figures:
    gaps: list[float] = []
    running = True

    async def ticker() -> None:
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    durations: list[float] = []

    async def timed(n: int) -> None:
        began = time.perf_counter()
        await start_one(n)
        durations.append(time.perf_counter() - began)

    tick = asyncio.get_running_loop().create_task(ticker())
    await asyncio.sleep(0.01)  # the ticker is running before the first start
    began = time.perf_counter()
    await asyncio.gather(*(timed(n) for n in range(starts)))
    seconds = time.perf_counter() - began
    await asyncio.sleep(0.01)
    running = False
    await tick
    return Figures(
        client="",
        broker="",
        starts=starts,
        longest_stall_ms=max(gaps) * 1000,
        p99_gap_ms=percentile(gaps, 99) * 1000,
        seconds=seconds,
        starts_per_second=starts / seconds,
        start_p50_ms=percentile(durations, 50) * 1000,
        start_max_ms=max(durations) * 1000,
    )


async def run_async(settings: Settings, starts: int, threads: int) -> Figures:
    async with AsyncSagaClient(settings, threads=threads) as client:
        await client.list_sagas(limit=1)  # connections made before the clock starts

        async def start_one(n: int) -> None:
            await client.start("order", {"order_id": f"o-{n}"})

        return await measure(starts, start_one)


async def run_sync(settings: Settings, starts: int, _threads: int) -> Figures:
    client = SagaClient(settings)
    client.list_sagas(limit=1)
    try:

        async def start_one(n: int) -> None:
            client.start("order", {"order_id": f"o-{n}"})  # what a handler does without it

        return await measure(starts, start_one)
    finally:
        client.close()


def scenario(kind: str, broker: str, database_url: str, starts: int, threads: int) -> Figures:
    with TemporaryDirectory() as home:
        broker_url = REDIS if broker == "up" else f"redis://127.0.0.1:{closed_port()}/0"
        settings = Settings(home=Path(home), broker_url=broker_url, database_url=database_url)
        open_store(database_url).upgrade()
        runner = run_async if kind == "AsyncSagaClient" else run_sync
        figures = asyncio.run(runner(settings, starts, threads))
        figures.client = kind if runner is run_sync else f"{kind} ({threads} threads)"
        figures.broker = broker
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=100)
    parser.add_argument("--database-url", help="default: a new PostgreSQL database per run")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[8], help="AsyncSagaClient pool sizes to try"
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # one warning per start with the broker down
    results: list[Figures] = []
    contenders = [("SagaClient", 1)] + [("AsyncSagaClient", n) for n in args.threads]
    for broker in ("up", "down"):
        for kind, threads in contenders:
            name = f"sagaflow_async_{uuid.uuid4().hex[:8]}"
            url = args.database_url or create_database(PG_ADMIN, name)
            try:
                results.append(scenario(kind, broker, url, args.starts, threads))
            finally:
                if not args.database_url:
                    drop_database(PG_ADMIN, name)
    table = Table(title=f"{args.starts} concurrent starts: the event loop's longest stall")
    for column in (
        "client",
        "broker",
        "longest stall ms",
        "p99 gap ms",
        "all started s",
        "starts/s",
        "start p50 ms",
        "start max ms",
    ):
        table.add_column(column, justify="left" if column in ("client", "broker") else "right")
    for f in results:
        table.add_row(
            f.client,
            f.broker,
            f"{f.longest_stall_ms:.1f}",
            f"{f.p99_gap_ms:.1f}",
            f"{f.seconds:.2f}",
            f"{f.starts_per_second:.0f}",
            f"{f.start_p50_ms:.1f}",
            f"{f.start_max_ms:.1f}",
        )
    console.print(table)
    RESULTS.write_text(json.dumps([asdict(f) for f in results], indent=2) + "\n")
    console.print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
