"""The chaos run's processes: a redis-server of its own (or a virtual host of its own on a
RabbitMQ), a PostgreSQL database, the workers.

Used by benchmarks/chaos.py and by tests that need a Redis they may kill.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sagaflow import Settings
from sagaflow.devstack.demo import SERVICES
from sagaflow.devstack.processes import WorkerGroup, WorkerProcess, WorkerSpec
from sagaflow.messaging.app import create_app

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get(
    "CHAOS_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


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


class RabbitBroker:
    """A virtual host of its own on the RabbitMQ running on this machine (rabbitmqctl reaches
    the local node only), whose connections the run may close and whose node it may restart.
    A restart stops the node's whole app: every virtual host on it sees the outage."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.base = f"amqp://{parts.username or 'guest'}:{parts.password or 'guest'}@"
        self.base += f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}"
        self.vhost = f"sagaflow-chaos-{uuid.uuid4().hex[:10]}"

    @property
    def url(self) -> str:
        return f"{self.base}/{self.vhost}"

    @staticmethod
    def ctl(*args: str, timeout: float = 120) -> str:
        if shutil.which("rabbitmqctl") is None:
            raise SystemExit("rabbitmqctl is not on PATH: the chaos run on RabbitMQ needs it")
        done = subprocess.run(
            ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def start(self) -> None:
        self.ctl("add_vhost", self.vhost)
        self.ctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")

    def stop(self) -> None:
        with contextlib.suppress(SystemExit, subprocess.TimeoutExpired):
            self.ctl("delete_vhost", self.vhost)

    def restart(self, downtime: float) -> None:
        """Stop the node's app (durable queues and persistent messages are kept on disk),
        then start it again after `downtime` seconds."""
        self.ctl("stop_app")
        time.sleep(downtime)  # the outage itself, not a wait for work
        self.ctl("start_app")
        self.ctl("await_startup")

    def connections(self) -> list[tuple[str, str]]:
        """(pid, peer port) of every client connection to this run's virtual host."""
        out = self.ctl(
            "list_connections", "-p", self.vhost, "pid", "peer_port", "-q", "--no-table-headers"
        )
        rows = [line.split("\t") for line in out.splitlines() if line.strip()]
        return [(row[0], row[1]) for row in rows if len(row) == 2]

    def drop_connection(self, rng: random.Random) -> str:
        """Close one client connection, as a broker restart or a network cut would for it."""
        found = self.connections()
        if not found:
            return "no connection to close"
        pid, port = rng.choice(found)
        self.ctl("close_connection", pid, "chaos run")
        return f"closed the connection from port {port} ({len(found)} open)"


def create_database(prefix: str = "sagaflow_chaos") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
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


def drop_store_connections(url: str) -> str:
    """Have PostgreSQL terminate every connection sagaflow's store holds to this database
    (they carry application_name 'sagaflow'), as a server restart or a proxy would."""
    name = sa.engine.make_url(url).database
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        dropped = conn.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :name AND application_name = 'sagaflow'"
            ),
            {"name": name},
        ).scalar_one()
    admin.dispose()
    return f"pg_terminate_backend of {dropped} sagaflow connections"


def refuse_connections(url: str) -> str:
    """Make the database unreachable, as a PostgreSQL server that is down: new connections are
    refused and every open one is terminated. Other databases on the server are left alone."""
    name = sa.engine.make_url(url).database
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        dropped = conn.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        ).scalar_one()
    admin.dispose()
    return f"{name} refusing connections ({dropped} terminated)"


def accept_connections(url: str) -> None:
    name = sa.engine.make_url(url).database
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
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
        self._log_starts: dict[int, int] = {}  # pid: where its run begins in its log
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
                self.revive_stuck()
                if time.monotonic() > deadline:
                    raise
            finally:
                app.close()

    def revive_stuck(self) -> None:
        """Kill any worker whose Celery logged an unrecoverable error but did not exit (its
        shutdown can hang on its pool), as a supervisor's health check would; revive_exited
        then starts it again and lists it with that error."""
        for worker in self.group.workers:
            if worker.alive and self._gave_up(worker):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.process.pid, signal.SIGKILL)
                worker.process.wait(timeout=30)

    def _gave_up(self, worker: WorkerProcess) -> bool:
        try:
            with open(worker.log_path, "rb") as log:
                log.seek(self._log_starts.get(worker.process.pid, 0))
                return b"Unrecoverable error" in log.read()
        except OSError:
            return False

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
            started_at = worker.log_path.stat().st_size if worker.log_path.exists() else 0
            revived_worker = self.group.start(self.specs[worker.spec.name])
            self._log_starts[revived_worker.process.pid] = started_at
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
