"""The chaos run: sagas through the example services while processes die and Redis forgets.

    python benchmarks/chaos.py --sagas 200 --faults 6 --seed 7
    python benchmarks/chaos.py --sagas 5000 --faults 40 --json chaos.json

Starts its own redis-server (no persistence) on a free port, a fresh PostgreSQL database, the
orchestrator, the three example services (prefork) and beat (the recovery sweep, short interval
and stall timeout). It runs N orders of the demo's mix (some fail on purpose at stock, payment or
shipping) and, while they run, injects K faults at random points: SIGKILL of a service worker
(its whole process group) or of one of its pool children, SIGKILL of the orchestrator or of one
of its children, FLUSHALL, and a Redis shutdown and restart. Killed workers are started again.

Then it audits every saga against the services' own effects table (`example_effects`, one row
per idempotency key): a completed saga shows each action once and no compensation; a failed one
shows the actions of the steps before the failing one, then their compensations, once each, in
reverse order, and nothing for the failing step or the steps after it. Each saga must end as its
input says (a failing order fails at its step) and the balances, stock and shipments must equal
what the audit predicts. Exit 1 on any violation or any saga not terminal by the deadline.

Starts are the producer's until the orchestrator has recorded them: a start message lost with
Redis is sent again by this producer (same saga id; the store refuses a duplicate) once it has
not been recorded for the stall timeout. Their number is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
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

from sagaflow import SagaRecord, SagaState, Settings, StepStatus  # noqa: E402
from sagaflow.app import create_app  # noqa: E402
from sagaflow.client import SagaClient  # noqa: E402
from sagaflow.demo import BALANCES, SERVICES, STOCK, DemoOrder, demo_orders  # noqa: E402
from sagaflow.processes import WorkerGroup, WorkerProcess, WorkerSpec  # noqa: E402
from sagaflow.schema import history, sagas  # noqa: E402
from sagaflow.store import SagaStore  # noqa: E402

console = Console(width=110)

POSTGRES_ADMIN_URL = os.environ.get(
    "CHAOS_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
FAULT_KINDS = (
    "service_worker",
    "service_child",
    "orchestrator",
    "orchestrator_child",
    "redis_flush",
    "redis_restart",
)
# Enough money and stock that only the orders meant to fail fail, whatever the order they run in.
SEED_BALANCES = {**BALANCES, "alice": 1_000_000_000, "carol": 1_000_000_000}
SEED_STOCK = {**STOCK, "widget": 100_000_000, "gizmo": 100_000_000}
# step name -> (service, action, compensation), as the example services record them
OPERATIONS = {
    "reserve_stock": ("inventory", "reserve", "release"),
    "charge_payment": ("payments", "charge", "refund"),
    "schedule_shipping": ("shipping", "schedule", "cancel"),
}
FAILS_AT = {
    "fails at stock": "reserve_stock",
    "fails at payment": "charge_payment",
    "fails at shipping": "schedule_shipping",
}


# -- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A redis-server of our own, without persistence, that we may flush, stop and restart."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=5)

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not on PATH: the chaos run starts its own Redis")
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - inherited by the child
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(self.folder)]
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(Exception):
                if self.client().ping():
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def flushall(self) -> None:
        self.client().flushall()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)  # no persistence: nothing to save
        self.process.wait(timeout=10)
        self.process = None


def create_database() -> str:
    name = f"sagaflow_chaos_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(False)


def drop_database(url: str) -> None:
    name = sa.engine.make_url(url).database
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (a prefork worker's pool processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (in parentheses) may hold spaces: the ppid follows the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


class Cluster:
    """The orchestrator, the services and beat as processes, with a way to kill and revive."""

    def __init__(self, settings: Settings, env: dict[str, str], logs: Path) -> None:
        self.settings = settings
        self.group = WorkerGroup(env, logs, cwd=ROOT)
        self.env = env
        self.logs = logs
        self.beat: subprocess.Popen[bytes] | None = None
        self.exits: list[str] = []  # workers that exited on their own, and why
        self.specs = {
            "orchestrator": WorkerSpec(
                "orchestrator", "sagaflow.worker", [settings.queue], pool="prefork", concurrency=2
            ),
            **{
                service: WorkerSpec(
                    service, f"workers.{service}", [service], pool="prefork", concurrency=2
                )
                for service in SERVICES
            },
        }

    def start(self) -> None:
        for spec in self.specs.values():
            self.group.start(spec)
        self.wait_ready()
        self.start_beat()

    def start_beat(self) -> None:
        log = open(self.logs / "beat.log", "ab")  # noqa: SIM115 - inherited by the child
        command = [sys.executable, "-m", "celery", "-A", "sagaflow.worker", "beat", "-l", "info"]
        command += ["-s", str(self.logs / "beat-schedule")]
        self.beat = subprocess.Popen(
            command,
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.revive_exited()
            # A fresh app each time: after a flush, a long-lived connection's cached
            # declarations (the ping reply queue) would not be made again.
            app = create_app("sagaflow-chaos-control", self.settings)
            try:
                self.group.wait_ready(app, timeout=max(1.0, deadline - time.monotonic()))
                return
            except Exception:  # Redis just restarted, or a worker exited meanwhile: again
                if time.monotonic() > deadline:
                    raise
            finally:
                app.close()

    def revive_exited(self) -> list[str]:
        """Start again, as a supervisor would, any worker (or beat) that exited on its own."""
        revived = []
        for worker in list(self.group.workers):
            if worker.alive:
                continue
            reason = next(
                (
                    line.strip()
                    for line in reversed(worker.log_tail(400).splitlines())
                    if "Unrecoverable error" in line or "CRITICAL" in line
                ),
                "no reason in its log",
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.process.pid, signal.SIGKILL)  # its pool, if left behind
            self.group.stop_worker(worker)
            self.group.start(self.specs[worker.spec.name])
            revived.append(
                f"{worker.spec.name} exited with code {worker.process.returncode}: {reason[:300]}"
            )
        if self.beat is not None and self.beat.poll() is not None:
            revived.append(f"beat exited with code {self.beat.returncode}")
            self.start_beat()
        self.exits += revived
        return revived

    def worker(self, name: str) -> WorkerProcess:
        return next(w for w in self.group.workers if w.spec.name == name)

    def kill(self, name: str) -> str:
        """SIGKILL a worker's whole process group (leader and pool), then start it again."""
        worker = self.worker(name)
        pid = worker.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        worker.process.wait(timeout=30)
        self.group.stop_worker(worker)
        self.group.start(self.specs[name])
        self.wait_ready()
        return f"{name} (pid {pid}) and its pool"

    def kill_child(self, name: str, rng: random.Random) -> str:
        """SIGKILL one pool process of a worker; the worker replaces it."""
        worker = self.worker(name)
        deadline = time.monotonic() + 30
        pool = children(worker.process.pid)
        while not pool:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} has no pool processes to kill")
            time.sleep(0.1)
            pool = children(worker.process.pid)
        pid = rng.choice(pool)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return f"{name} pool process {pid}"

    def stop(self) -> None:
        if self.beat is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.beat.pid, signal.SIGTERM)
            try:
                self.beat.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.beat.pid, signal.SIGKILL)
                self.beat.wait(timeout=10)
        leaders = [w.process.pid for w in self.group.workers]
        self.group.stop()
        for pid in leaders:  # pool processes a dead leader left behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


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
    starts_resent: int = 0
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


def inject(
    kind: str, cluster: Cluster, redis: RedisServer, rng: random.Random, max_downtime: float
) -> Fault:
    if kind == "service_worker":
        return Fault(0, kind, cluster.kill(rng.choice(SERVICES)))
    if kind == "service_child":
        return Fault(0, kind, cluster.kill_child(rng.choice(SERVICES), rng))
    if kind == "orchestrator":
        return Fault(0, kind, cluster.kill("orchestrator"))
    if kind == "orchestrator_child":
        return Fault(0, kind, cluster.kill_child("orchestrator", rng))
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
    raise ValueError(kind)


class Producer:
    """Starts the orders, at most `window` running at once, and re-sends lost starts."""

    def __init__(
        self,
        client: SagaClient,
        store: SagaStore,
        orders: list[DemoOrder],
        ids: list[str],
        window: int,
        resend_after: float,
    ) -> None:
        self.client = client
        self.store = store
        self.orders = orders
        self.ids = ids
        self.index = {saga_id: i for i, saga_id in enumerate(ids)}
        self.window = window
        self.resend_after = resend_after
        self.next = 0
        self.sent_at: dict[str, float] = {}  # open (not terminal) sagas -> when last sent
        self.recorded: set[str] = set()
        self.finished = 0
        self.resent = 0

    def send(self, index: int) -> bool:
        order = self.orders[index]
        try:
            self.client.start(order.saga_type, order.data, saga_id=self.ids[index])
        except Exception:
            return False  # broker away: sent again on a later tick
        return True

    def tick(self) -> None:
        open_ids = list(self.sent_at)
        states: dict[str, str] = {}
        for chunk in range(0, len(open_ids), 500):
            part = open_ids[chunk : chunk + 500]
            with contextlib.suppress(Exception), self.store.engine.connect() as conn:
                states.update(
                    (row.id, row.state)
                    for row in conn.execute(
                        sa.select(sagas.c.id, sagas.c.state).where(sagas.c.id.in_(part))
                    )
                )
        now = time.monotonic()
        for saga_id in open_ids:
            state = states.get(saga_id)
            if state is not None:
                self.recorded.add(saga_id)
                if SagaState(state).is_terminal:
                    del self.sent_at[saga_id]
                    self.finished += 1
            elif now - self.sent_at[saga_id] > self.resend_after:
                if self.send(self.index[saga_id]):
                    self.resent += 1
                self.sent_at[saga_id] = now
        while self.next < len(self.orders) and len(self.sent_at) < self.window:
            if not self.send(self.next):
                break
            self.sent_at[self.ids[self.next]] = time.monotonic()
            self.next += 1

    @property
    def done(self) -> bool:
        return self.next == len(self.orders) and not self.sent_at


# -- the audit -----------------------------------------------------------------------------------


@dataclass
class ServiceState:
    effects: dict[str, list[tuple[str, str]]]  # saga id -> [(step, phase)] in the order applied
    stray_effects: list[str]
    balances: dict[str, int]
    stock: dict[str, int]
    shipments: dict[str, str]  # order id -> status


def read_services(url: str) -> ServiceState:
    from workers import db

    effects: dict[str, list[tuple[str, str]]] = {}
    stray: list[str] = []
    with db.engine(url).connect() as conn:
        rows = conn.execute(
            sa.select(db.effects.c.idempotency_key, db.effects.c.saga_id).order_by(db.effects.c.id)
        ).all()
        shipments = {r.order_id: r.status for r in conn.execute(sa.select(db.shipments))}
    for key, saga_id in rows:
        prefix = f"{saga_id}:"
        if not key.startswith(prefix):
            stray.append(key)
            continue
        step, _, phase = key[len(prefix) :].partition(":")
        effects.setdefault(saga_id, []).append((step, phase or "action"))
    return ServiceState(effects, stray, db.balances(url), db.quantities(url), shipments)


def expected_effects(saga: SagaRecord) -> list[tuple[str, str]] | str:
    """The effects a terminal saga's steps say took place, in order; or why they are wrong."""
    statuses = [s.status for s in saga.steps]
    names = [s.name for s in saga.steps]
    if saga.state is SagaState.COMPLETED:
        if any(s is not StepStatus.COMPLETED for s in statuses):
            return f"completed with steps {[s.value for s in statuses]}"
        return [(n, "action") for n in names]
    if saga.state is SagaState.FAILED:
        if statuses.count(StepStatus.FAILED) != 1:
            return f"failed with steps {[s.value for s in statuses]}"
        at = statuses.index(StepStatus.FAILED)
        if any(s is not StepStatus.COMPENSATED for s in statuses[:at]) or any(
            s is not StepStatus.SKIPPED for s in statuses[at + 1 :]
        ):
            return f"failed at {names[at]} with steps {[s.value for s in statuses]}"
        done = names[:at]
        return [(n, "action") for n in done] + [(n, "compensation") for n in reversed(done)]
    return f"ended {saga.state.value} (error: {saga.error})"


def audit(
    orders: Sequence[DemoOrder],
    records: Sequence[SagaRecord | None],
    ids: Sequence[str],
    services: ServiceState,
) -> tuple[list[str], list[str]]:
    """(violations, sagas not terminal with where they stand)."""
    violations: list[str] = []
    not_terminal: list[str] = []
    balances, stock = dict(SEED_BALANCES), dict(SEED_STOCK)
    want_shipments: dict[str, str] = {}
    for order, saga_id, saga in zip(orders, ids, records, strict=True):
        applied = services.effects.get(saga_id, [])
        if saga is None:
            not_terminal.append(f"{saga_id}: never recorded (effects: {applied})")
            if applied:
                violations.append(f"{saga_id}: not recorded but has effects {applied}")
            continue
        if not saga.state.is_terminal:
            where = ", ".join(
                f"{s.name}={s.status.value}/a{s.attempts}/c{s.compensation_attempts}"
                for s in saga.steps
            )
            not_terminal.append(f"{saga_id}: {saga.state.value} since {saga.updated_at} [{where}]")
            continue
        fails_at = FAILS_AT.get(order.expect)
        if fails_at is None and saga.state is not SagaState.COMPLETED:
            violations.append(
                f"{saga_id}: should complete, ended {saga.state.value} ({saga.error})"
            )
        elif fails_at is not None:
            failed = [s.name for s in saga.steps if s.status is StepStatus.FAILED]
            if saga.state is not SagaState.FAILED or failed != [fails_at]:
                violations.append(
                    f"{saga_id}: should fail at {fails_at}, ended {saga.state.value} "
                    f"with failed steps {failed} ({saga.error})"
                )
        want = expected_effects(saga)
        if isinstance(want, str):
            violations.append(f"{saga_id}: {want}")
            continue
        if applied != want:
            violations.append(f"{saga_id}: {saga.state.value}, effects {applied}, expected {want}")
        unknown = [step for step, _ in applied if step not in OPERATIONS]
        if unknown:
            violations.append(f"{saga_id}: effects of unknown steps {unknown}")
        # What the services' data should show, from the saga's outcome alone.
        data = saga.data
        if saga.state is SagaState.COMPLETED:
            stock[data["sku"]] -= data["quantity"]
            if any(s.name == "charge_payment" for s in saga.steps):
                balances[data["customer"]] -= data["amount"]
            want_shipments[data["order_id"]] = "scheduled"
    for key in services.stray_effects:
        violations.append(f"effect {key!r} belongs to no saga of this run")
    if not not_terminal:
        for name, value in sorted(services.balances.items()):
            if value != balances.get(name):
                violations.append(f"balance of {name}: {value}, predicted {balances.get(name)}")
        for name, value in sorted(services.stock.items()):
            if value != stock.get(name):
                violations.append(f"stock of {name}: {value}, predicted {stock.get(name)}")
        if services.shipments != want_shipments:
            extra = sorted(set(services.shipments.items()) - set(want_shipments.items()))
            missing = sorted(set(want_shipments.items()) - set(services.shipments.items()))
            violations.append(f"shipments differ: unexpected {extra[:10]}, missing {missing[:10]}")
    return violations, not_terminal


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
    redis = RedisServer(home / "redis")
    redis.start()
    database_url = create_database()
    console.print(
        f"redis-server on port {redis.port}, database {sa.engine.make_url(database_url).database},"
        f" logs in {home}",
        highlight=False,
    )
    settings = Settings(
        home=home,
        broker_url=redis.url,
        database_url=database_url,
        definitions=("workers.definitions",),
        stall_timeout=args.stall_timeout,
        recover_interval=args.recover_interval,
    )
    env = {
        **os.environ,
        **settings.to_env(),
        "WORKERS_DATABASE_URL": database_url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    store = SagaStore(database_url)
    cluster = Cluster(settings, env, home / "logs")
    client = SagaClient(settings, store=store)
    try:
        store.upgrade()
        from workers import db

        db.seed(SEED_BALANCES, SEED_STOCK, url=database_url)
        with console.status("starting the orchestrator, 3 services and beat…"):
            cluster.start()
        orders = demo_orders(args.sagas)
        ids = [f"chaos{seed}-{i:06d}" for i in range(args.sagas)]
        producer = Producer(client, store, orders, ids, args.window, args.stall_timeout)
        plan = plan_faults(rng, args.faults, args.sagas, args.kinds)
        started = time.monotonic()
        deadline: float | None = None
        last_report = started
        while not producer.done:
            producer.tick()
            for line in cluster.revive_exited():
                console.print(f"[yellow]restarted[/] {line}", highlight=False)
            now = time.monotonic()
            if plan and producer.finished >= plan[0][0]:
                _, kind = plan.pop(0)
                at = now - started
                fault = inject(kind, cluster, redis, rng, args.redis_downtime)
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
        figures.starts_resent = producer.resent
        figures.unplanned_exits = list(cluster.exits)
        with console.status("auditing…"):
            records = [store.load(saga_id) for saga_id in ids]
            services = read_services(database_url)
            figures.violations, figures.not_terminal_detail = audit(orders, records, ids, services)
            counts = history_counts(store)
        figures.steps_redriven = counts["step_redriven"] + counts["compensation_redriven"]
        figures.outcomes_ignored = counts["outcome_ignored"]
        states = Counter(r.state for r in records if r is not None)
        figures.completed = states[SagaState.COMPLETED]
        figures.failed = states[SagaState.FAILED]
        figures.terminal = sum(n for state, n in states.items() if state.is_terminal)
        figures.other_terminal = figures.terminal - figures.completed - figures.failed
        figures.not_terminal = args.sagas - figures.terminal
        figures.sagas_per_s = round(figures.terminal / max(figures.elapsed_s, 0.001), 2)
        if args.self_check:
            figures.self_check = self_check(orders, records, ids, database_url)
    finally:
        with console.status("stopping…"):
            cluster.stop()
            client.close()
            store.dispose()
            redis.stop()
            if args.keep:
                console.print(f"kept database {database_url}", highlight=False)
            else:
                drop_database(database_url)
    return figures


def self_check(
    orders: Sequence[DemoOrder],
    records: Sequence[SagaRecord | None],
    ids: Sequence[str],
    database_url: str,
) -> str:
    """Delete one effect of a completed saga and make sure the audit notices."""
    from workers import db

    target = next((r for r in records if r is not None and r.state is SagaState.COMPLETED), None)
    if target is None:
        return "failed: no completed saga to corrupt"
    with db.engine(database_url).begin() as conn:
        conn.execute(
            db.effects.delete().where(
                db.effects.c.idempotency_key == f"{target.saga_id}:{target.steps[-1].name}"
            )
        )
    violations, _ = audit(orders, records, ids, read_services(database_url))
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
        ("starts re-sent by the producer", str(figures.starts_resent)),
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
        "--kinds",
        type=lambda value: [k for k in value.split(",") if k],
        default=list(FAULT_KINDS),
        help=f"fault kinds to draw from, comma-separated (default: all of {','.join(FAULT_KINDS)})",
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
        "--redis-downtime", type=float, default=5.0, help="longest Redis outage, seconds"
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
    unknown = sorted(set(args.kinds) - set(FAULT_KINDS))
    if unknown or not args.kinds:
        parser.error(f"unknown fault kinds {unknown}; choose among {', '.join(FAULT_KINDS)}")
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
