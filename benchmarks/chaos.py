"""The chaos run: sagas through the example services while processes die and Redis forgets.

    python benchmarks/chaos.py --sagas 200 --faults 6 --seed 7
    python benchmarks/chaos.py --sagas 5000 --faults 40 --json chaos.json
    python benchmarks/chaos.py --broker amqp://guest:guest@127.0.0.1:5672 --faults 7

With `--broker amqp://...` it runs on that RabbitMQ (this machine's: rabbitmqctl makes it a
virtual host of its own) and its broker faults are RabbitMQ's: the node's app stopped and started
again (durable queues and persistent messages survive it; every virtual host on the node sees
the outage, so run it where nothing else needs that RabbitMQ), and one client connection
closed by the broker. The rest of this text describes the default run on Redis.

Starts its own redis-server (no persistence) on a free port, fresh PostgreSQL databases for the
saga store and for the services, the orchestrator, the three example services (prefork) and beat
(the recovery sweep, short interval and stall timeout). It runs N orders of the demo's mix (some
fail on purpose at stock, payment or shipping) and, while they run, injects K faults at random
points: SIGKILL of a service worker (its whole process group) or of one of its pool children,
SIGKILL of the orchestrator or of one of its children, FLUSHALL, Redis killed and started again
empty, PostgreSQL dropping every connection sagaflow holds (the orchestrator's, beat's and this
producer's), and the store's database refusing connections while sagas are started, Redis is
killed and started empty, and one more saga is started with both away (the services' database is
left alone). Killed workers are started again, and so is any worker that exits on its own (as a
supervisor would), which is reported.

Then it audits every saga against the services' own effects table (`example_effects`, one row
per idempotency key): a completed saga shows each action once and no compensation; a failed one
shows the actions of the steps before the failing one, then their compensations, once each, in
reverse order, and nothing for the failing step or the steps after it. Each saga must end as its
input says (a failing order fails at its step) and the balances, stock and shipments must equal
what the audit predicts. Exit 1 on any violation or any saga not terminal by the deadline.

SagaClient.start records each saga as requested before sending its start, and the sweep starts
one whose message was lost with Redis; a start made while the store was away is kept in the
producer's outbox and recorded from there once it is back. This producer never starts a saga
again once it was given its id: a saga given an id and never recorded is a violation.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.chaos_audit import SEED_BALANCES, SEED_STOCK, audit, read_services  # noqa: E402
from benchmarks.chaos_cluster import (  # noqa: E402
    Cluster,
    RabbitBroker,
    RedisServer,
    accept_connections,
    create_database,
    drop_database,
    drop_store_connections,
    refuse_connections,
)
from sagaflow import SagaRecord, SagaState, Settings  # noqa: E402
from sagaflow.client.outbox import StartOutbox  # noqa: E402
from sagaflow.client.saga_client import Durability, SagaClient  # noqa: E402
from sagaflow.core.vocabulary import HistoryEvent  # noqa: E402
from sagaflow.devstack.demo import SERVICES, DemoOrder, demo_orders  # noqa: E402
from sagaflow.store.factory import open_store  # noqa: E402
from sagaflow.store.protocol import SagaStore  # noqa: E402
from sagaflow.store.schema import history, sagas  # noqa: E402

console = Console(width=110)

# In this order: a seed replays the same plan.
ON_REDIS = (
    "service_worker",
    "service_child",
    "orchestrator",
    "orchestrator_child",
    "redis_flush",
    "redis_restart",
    "postgres_drop",
    "store_outage_redis_loss",
)
ON_RABBITMQ = (
    "service_worker",
    "service_child",
    "orchestrator",
    "orchestrator_child",
    "rabbitmq_restart",
    "rabbitmq_connection_drop",
    "postgres_drop",
)
FAULT_KINDS = tuple(dict.fromkeys(ON_REDIS + ON_RABBITMQ))


def kinds_for(broker: str | None) -> tuple[str, ...]:
    """The fault kinds that apply to the broker the run uses (its own Redis by default)."""
    return ON_RABBITMQ if broker else ON_REDIS


# Orders held back for each store outage, started while the store is away (and one more once
# Redis is gone too): by then the window may have started every other order.
OUTAGE_STARTS = 10


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Fault:
    at: float  # seconds since the first start
    kind: str
    target: str
    downtime: float = 0.0


@dataclass
class RunFigures:
    seed: int
    sagas: int
    faults_asked: int
    window: int
    stall_timeout: float
    recover_interval: float
    completed: int = 0
    failed: int = 0
    other_terminal: int = 0
    terminal: int = 0
    not_terminal: int = 0
    violations: list[str] = field(default_factory=list)
    not_terminal_detail: list[str] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    starts_in_store: int = 0  # where SagaClient.submit kept each start
    starts_in_outbox: int = 0
    starts_lost: int = 0  # given an id, never recorded
    outbox_left: int = 0  # starts still in the outbox after the run
    unplanned_exits: list[str] = field(default_factory=list)
    steps_redriven: int = 0
    outcomes_ignored: int = 0
    elapsed_s: float = 0.0
    sagas_per_s: float = 0.0
    self_check: str | None = None

    @property
    def faults_by_kind(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.faults))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["faults_injected"] = len(self.faults)
        data["faults_by_kind"] = self.faults_by_kind
        data["violation_count"] = len(self.violations)
        return data


def plan_faults(
    rng: random.Random, count: int, sagas: int, allowed: Sequence[str] = FAULT_KINDS
) -> list[tuple[int, str]]:
    """(finished sagas at which to strike, kind): every kind once before any repeats."""
    kinds: list[str] = []
    while len(kinds) < count:
        batch = list(allowed)
        rng.shuffle(batch)
        kinds += batch
    points = sorted(rng.randint(sagas * 5 // 100, sagas * 85 // 100) for _ in range(count))
    return list(zip(points, kinds[:count], strict=True))


def held_back(plan: Sequence[tuple[int, str]], sagas: int) -> int:
    """Orders kept for the store outages still to come."""
    outages = sum(1 for _, kind in plan if kind == "store_outage_redis_loss")
    return min(outages * (OUTAGE_STARTS + 1), sagas // 4)


def inject(
    kind: str,
    cluster: Cluster,
    broker: RedisServer | RabbitBroker,
    rng: random.Random,
    max_downtime: float,
    database_url: str,
    producer: Producer,
) -> Fault:
    if kind == "service_worker":
        return Fault(0, kind, cluster.kill(rng.choice(SERVICES)))
    if kind == "service_child":
        return Fault(0, kind, cluster.kill_child(rng.choice(SERVICES), rng))
    if kind == "orchestrator":
        return Fault(0, kind, cluster.kill("orchestrator"))
    if kind == "orchestrator_child":
        return Fault(0, kind, cluster.kill_child("orchestrator", rng))
    if kind == "postgres_drop":
        return Fault(0, kind, drop_store_connections(database_url))
    if kind == "rabbitmq_restart":
        assert isinstance(broker, RabbitBroker)
        downtime = round(rng.uniform(0.2, max_downtime), 2)
        broker.restart(downtime)
        cluster.wait_ready()
        return Fault(0, kind, f"rabbitmqctl stop_app, start_app after {downtime}s", downtime)
    if kind == "rabbitmq_connection_drop":
        assert isinstance(broker, RabbitBroker)
        return Fault(0, kind, broker.drop_connection(rng))
    redis = broker
    assert isinstance(redis, RedisServer), kind
    if kind == "redis_flush":
        redis.flushall()
        return Fault(0, kind, "FLUSHALL")
    if kind == "redis_restart":
        downtime = round(rng.uniform(0.2, max_downtime), 2)
        redis.stop()
        time.sleep(downtime)  # the outage itself, not a wait for work
        redis.start()
        cluster.wait_ready()
        return Fault(0, kind, f"SIGKILL redis-server, start it empty after {downtime}s", downtime)
    if kind == "store_outage_redis_loss":
        downtime = round(rng.uniform(0.2, max_downtime), 2)
        target = refuse_connections(database_url)
        try:
            started = producer.start_now(OUTAGE_STARTS)  # kept in the outbox, sent to Redis
            redis.stop()  # every message lost, those starts' included
            started += producer.start_now(1)  # neither store nor broker: the outbox alone
            time.sleep(downtime)  # the outage itself, not a wait for work
            redis.start()
            cluster.wait_ready()
        finally:
            accept_connections(database_url)
        detail = f"{target}, {started} sagas started, Redis killed and started empty after "
        return Fault(0, kind, f"{detail}{downtime}s, then the store back", downtime)
    raise ValueError(kind)


class Producer:
    """Starts the orders, at most `window` running at once, each once it was given its id."""

    def __init__(
        self,
        client: SagaClient,
        store: SagaStore,
        orders: list[DemoOrder],
        ids: list[str],
        window: int,
        held_back: int = 0,
    ) -> None:
        self.client = client
        self.store = store
        self.orders = orders
        self.ids = ids
        self.window = window
        self.held_back = held_back  # the last orders, for start_now
        self.next = 0
        self.sent_at: dict[str, float] = {}  # open (not terminal) sagas -> when started
        self.finished = 0
        self.kept: Counter[Durability] = Counter()  # where each start was kept
        self.given: set[str] = set()  # ids start() returned

    def send(self, index: int) -> bool:
        order = self.orders[index]
        try:
            receipt = self.client.submit(order.saga_type, order.data, saga_id=self.ids[index])
        except Exception:
            return False  # not kept anywhere, no id given: tried again on a later tick
        self.kept[receipt.durability] += 1
        self.given.add(receipt.saga_id)
        self.sent_at[receipt.saga_id] = time.monotonic()
        self.next += 1
        return True

    def start_now(self, count: int) -> int:
        """Start up to `count` more orders whatever the window, the held-back ones included."""
        started = 0
        while started < count and self.next < len(self.orders) and self.send(self.next):
            started += 1
        self.held_back = max(0, self.held_back - started)
        return started

    def tick(self) -> None:
        open_ids = list(self.sent_at)
        states: dict[str, str] = {}
        for chunk in range(0, len(open_ids), 500):
            part = open_ids[chunk : chunk + 500]
            try:
                with self.store.engine.connect() as conn:
                    states.update(
                        (row.id, row.state)
                        for row in conn.execute(
                            sa.select(sagas.c.id, sagas.c.state).where(sagas.c.id.in_(part))
                        )
                    )
            except Exception:
                pass  # the store away: read again on the next tick
        for saga_id in open_ids:
            state = states.get(saga_id)
            if state is not None and SagaState(state).is_terminal:
                del self.sent_at[saga_id]
                self.finished += 1
        while self.next < len(self.orders) - self.held_back and len(self.sent_at) < self.window:
            if not self.send(self.next):
                break

    @property
    def done(self) -> bool:
        return self.next == len(self.orders) and not self.sent_at

    @property
    def idle(self) -> bool:
        """Nothing running and nothing more to start but what is held back: no saga will
        finish to bring the next fault due."""
        return not self.sent_at and self.next >= len(self.orders) - self.held_back


def history_counts(store: SagaStore) -> Counter[str]:
    """How often each history event was recorded (the database holds this run only)."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(history.c.event, sa.func.count()).group_by(history.c.event)
        ).all()
    return Counter({event: count for event, count in rows})


# -- main ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> RunFigures:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    rng = random.Random(seed)
    console.print(
        f"[bold]chaos run[/]: {args.sagas} sagas, {args.faults} faults, seed {seed} "
        f"(replay with --seed {seed})",
        highlight=False,
    )
    home = Path(args.logs or tempfile.mkdtemp(prefix="sagaflow-chaos-")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    figures = RunFigures(
        seed, args.sagas, args.faults, args.window, args.stall_timeout, args.recover_interval
    )
    broker: RedisServer | RabbitBroker = (
        RabbitBroker(args.broker) if args.broker else RedisServer(home / "redis")
    )
    broker.start()
    # The services keep their data apart, so that a store outage is the store's alone.
    database_url = create_database()
    services_url = create_database("sagaflow_chaos_services")
    where = (
        f"RabbitMQ virtual host {broker.vhost}"
        if isinstance(broker, RabbitBroker)
        else f"redis-server on port {broker.port}"
    )
    console.print(
        f"{where}, databases "
        f"{sa.engine.make_url(database_url).database} (store) and "
        f"{sa.engine.make_url(services_url).database} (services), logs in {home}",
        highlight=False,
    )
    settings = Settings(
        home=home,
        broker_url=broker.url,
        database_url=database_url,
        definitions=("workers.definitions",),
        stall_timeout=args.stall_timeout,
        recover_interval=args.recover_interval,
    )
    env = {
        **os.environ,
        **settings.to_env(),
        "WORKERS_DATABASE_URL": services_url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    store = open_store(database_url)
    cluster = Cluster(settings, env, home / "logs")
    client = SagaClient(settings, store=store)
    try:
        store.upgrade()
        from workers import db

        db.seed(SEED_BALANCES, SEED_STOCK, url=services_url)
        with console.status("starting the orchestrator, 3 services and beat…"):
            cluster.start()
        orders = demo_orders(args.sagas)
        ids = [f"chaos{seed}-{i:06d}" for i in range(args.sagas)]
        plan = plan_faults(rng, args.faults, args.sagas, args.kinds)
        producer = Producer(client, store, orders, ids, args.window, held_back(plan, args.sagas))
        started = time.monotonic()
        deadline: float | None = None
        last_report = started
        while not producer.done:
            producer.tick()
            for line in cluster.revive_exited():
                console.print(f"[yellow]restarted[/] {line}", highlight=False)
            now = time.monotonic()
            # Every fault due strikes now: the last sagas can finish within one tick, and a
            # fault left for the next tick would then never strike.
            while plan and (producer.finished >= plan[0][0] or producer.idle):
                _, kind = plan.pop(0)
                at = time.monotonic() - started
                fault = inject(
                    kind, cluster, broker, rng, args.redis_downtime, database_url, producer
                )
                producer.held_back = held_back(plan, args.sagas)
                fault.at = round(at, 2)
                figures.faults.append(fault)
                console.print(
                    f"{fault.at:7.1f}s fault {len(figures.faults)}/{args.faults}: {kind} "
                    f"({fault.target}); {producer.finished} sagas finished",
                    highlight=False,
                )
            if deadline is None and producer.next == len(orders) and not plan:
                deadline = now + args.timeout
            if deadline is not None and now > deadline:
                break
            if now - last_report > 10:
                console.print(
                    f"{now - started:7.1f}s {producer.finished}/{args.sagas} finished, "
                    f"{len(producer.sent_at)} running",
                    style="dim",
                    highlight=False,
                )
                last_report = now
            time.sleep(0.1)
        figures.elapsed_s = round(time.monotonic() - started, 2)
        figures.starts_in_store = producer.kept[Durability.STORE]
        figures.starts_in_outbox = producer.kept[Durability.OUTBOX]
        figures.unplanned_exits = list(cluster.exits)
        with console.status("auditing…"):
            # A connection the last fault dropped may still be pooled: read on new ones.
            store.dispose()
            records = [store.load(saga_id) for saga_id in ids]
            services = read_services(services_url)
            figures.violations, figures.not_terminal_detail = audit(
                orders, records, ids, services, producer.given
            )
            counts = history_counts(store)
            figures.starts_lost = sum(
                1
                for saga_id, r in zip(ids, records, strict=True)
                if r is None and saga_id in producer.given
            )
            figures.outbox_left = StartOutbox(Path(settings.outbox_path), database_url).count()
            if figures.outbox_left:
                figures.violations.append(
                    f"the outbox still holds {figures.outbox_left} starts after the run"
                )
        figures.steps_redriven = (
            counts[HistoryEvent.STEP_REDRIVEN] + counts[HistoryEvent.COMPENSATION_REDRIVEN]
        )
        figures.outcomes_ignored = counts[HistoryEvent.OUTCOME_IGNORED]
        states = Counter(r.state for r in records if r is not None)
        figures.completed = states[SagaState.COMPLETED]
        figures.failed = states[SagaState.FAILED]
        figures.terminal = sum(n for state, n in states.items() if state.is_terminal)
        figures.other_terminal = figures.terminal - figures.completed - figures.failed
        figures.not_terminal = args.sagas - figures.terminal
        figures.sagas_per_s = round(figures.terminal / max(figures.elapsed_s, 0.001), 2)
        if args.self_check:
            figures.self_check = self_check(orders, records, ids, services_url, producer.given)
    finally:
        with console.status("stopping…"):
            cluster.stop()
            client.close()
            store.dispose()
            broker.stop()
            if args.keep:
                console.print(f"kept databases {database_url} {services_url}", highlight=False)
            else:
                drop_database(database_url)
                drop_database(services_url)
    return figures


def self_check(
    orders: Sequence[DemoOrder],
    records: Sequence[SagaRecord | None],
    ids: Sequence[str],
    services_url: str,
    given: set[str],
) -> str:
    """Delete one effect of a completed saga and make sure the audit notices."""
    from workers import db

    target = next((r for r in records if r is not None and r.state is SagaState.COMPLETED), None)
    if target is None:
        return "failed: no completed saga to corrupt"
    with db.engine(services_url).begin() as conn:
        conn.execute(
            db.effects.delete().where(
                db.effects.c.idempotency_key == f"{target.saga_id}:{target.steps[-1].name}"
            )
        )
    violations, _ = audit(orders, records, ids, read_services(services_url), given)
    if any(v.startswith(f"{target.saga_id}:") for v in violations):
        return f"passed: the deleted effect of {target.saga_id} was flagged"
    return f"failed: deleting an effect of {target.saga_id} went unnoticed"


def summary(figures: RunFigures) -> Table:
    table = Table(title=f"chaos run, seed {figures.seed}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    by_kind = ", ".join(f"{k} {n}" for k, n in sorted(figures.faults_by_kind.items()))
    rows = [
        ("sagas", f"{figures.sagas:,}"),
        ("completed", f"{figures.completed:,}"),
        ("failed (compensated)", f"{figures.failed:,}"),
        ("other terminal states", str(figures.other_terminal)),
        ("faults injected", f"{len(figures.faults)} of {figures.faults_asked}"),
        ("  by kind", by_kind or "-"),
        ("terminal", f"{figures.terminal:,} of {figures.sagas:,}"),
        ("violations", str(len(figures.violations))),
        (
            "starts kept in the store / in the outbox",
            f"{figures.starts_in_store:,} / {figures.starts_in_outbox}",
        ),
        ("starts given an id, never recorded", str(figures.starts_lost)),
        ("workers that exited on their own (restarted)", str(len(figures.unplanned_exits))),
        ("steps re-driven by the sweep", str(figures.steps_redriven)),
        ("outcomes ignored (late/duplicate)", str(figures.outcomes_ignored)),
        ("elapsed", f"{figures.elapsed_s:.1f} s"),
        ("throughput", f"{figures.sagas_per_s:.1f} sagas/s"),
    ]
    if figures.self_check is not None:
        rows.append(("audit self-check", figures.self_check))
    for name, value in rows:
        table.add_row(name, value)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=200)
    parser.add_argument("--faults", type=int, default=6)
    parser.add_argument("--seed", type=int, default=None, help="replay a run (printed at start)")
    parser.add_argument(
        "--broker",
        default=None,
        help="amqp://user:password@host:port: run on that RabbitMQ (this machine's: rabbitmqctl "
        "makes a virtual host of its own and restarts the node) instead of a Redis of its own",
    )
    parser.add_argument(
        "--kinds",
        type=lambda value: [k for k in value.split(",") if k],
        default=None,
        help="fault kinds to draw from, comma-separated (default: every kind for the broker: "
        f"{','.join(ON_REDIS)}; with --broker amqp:// {','.join(ON_RABBITMQ)})",
    )
    parser.add_argument("--window", type=int, default=100, help="sagas running at once")
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds allowed after the last start and the last fault for every saga to end",
    )
    parser.add_argument("--stall-timeout", type=float, default=10.0)
    parser.add_argument(
        "--redis-downtime", type=float, default=5.0, help="longest broker outage, seconds"
    )
    parser.add_argument("--recover-interval", type=float, default=2.0)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--logs", type=Path, default=None, help="folder for worker logs")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL database")
    parser.add_argument(
        "--self-check",
        action="store_true",
        help="after the audit, delete one effect and check the audit flags it",
    )
    args = parser.parse_args(argv)
    if args.broker is not None and not args.broker.startswith("amqp://"):
        parser.error(f"--broker takes an amqp:// URL, not {args.broker!r}")
    allowed = kinds_for(args.broker)
    if args.kinds is None:
        args.kinds = list(allowed)
    unknown = sorted(set(args.kinds) - set(allowed))
    if unknown or not args.kinds:
        parser.error(f"fault kinds {unknown} do not apply; choose among {', '.join(allowed)}")
    figures = run(args)
    console.print(summary(figures))
    for line in figures.violations[:50]:
        console.print(f"[red]violation[/] {line}", highlight=False)
    for line in figures.unplanned_exits:
        console.print(f"[yellow]exited on its own[/] {line}", highlight=False)
    for line in figures.not_terminal_detail[:50]:
        console.print(f"[yellow]not terminal[/] {line}", highlight=False)
    if args.json:
        args.json.write_text(json.dumps(figures.to_json(), indent=2, default=str) + "\n")
    ok = (
        not figures.violations
        and figures.not_terminal == 0
        and len(figures.faults) == figures.faults_asked
        and (figures.self_check is None or figures.self_check.startswith("passed"))
    )
    console.print("[green]no violation[/]" if ok else "[bold red]chaos run failed[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
