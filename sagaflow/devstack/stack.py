"""`sagaflow stack`: what docker-compose.yml runs, as local processes, for machines without Docker.

Migrates the store (and prepares the example services' tables, as compose's `migrate` does),
then starts the orchestrator, one worker per service, beat, Flower and the saga dashboard, each
in its own process with its own log file, waits until they all answer, and blocks. Ctrl-C or
SIGTERM stops every process cleanly (exit 0); a process that dies on its own stops the rest
(exit 1), the way foreman and honcho do.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from celery import Celery
from rich.console import Console
from rich.table import Table

from sagaflow.client.saga_client import BrokerUnavailable
from sagaflow.config import Settings, ensure_home
from sagaflow.devstack.examples import EXAMPLE_PACKAGE, SERVICES
from sagaflow.devstack.processes import (
    CommandSpec,
    WorkerGroup,
    WorkerProcess,
    WorkerSpec,
)
from sagaflow.errors import (
    ConfigurationError,
    SagaflowError,
    StackStopRequested,
    StoreUnavailable,
    WorkerStartError,
)
from sagaflow.messaging.app import create_app
from sagaflow.store.factory import embedded, open_store
from sagaflow.terminal import driver_message
from sagaflow.urls import mask_url, scrub, secrets_of

FLOWER_PORT = 5555
DASHBOARD_PORT = 8650
HOST = "127.0.0.1"  # Flower and the dashboard are never published beyond this machine
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_RESERVED = ("orchestrator", "beat", "flower", "dashboard")


@dataclass(frozen=True)
class Service:
    """One service worker: `celery -A MODULE worker -Q QUEUE -n NAME@%h`."""

    name: str
    module: str
    queue: str

    @classmethod
    def parse(cls, text: str) -> Service:
        """`NAME=MODULE[:QUEUE]`; the queue defaults to the name."""
        name, sep, rest = text.partition("=")
        module, _, queue = rest.partition(":")
        if not sep or not _NAME.match(name) or not module:
            raise ValueError(f"{text!r} is not NAME=MODULE[:QUEUE]")
        return cls(name, module, queue or name)


# The repository's workers/, installed as sagaflow.example: the stack runs from any folder.
EXAMPLE_SERVICES = tuple(Service(name, f"{EXAMPLE_PACKAGE}.{name}", name) for name in SERVICES)


@dataclass(frozen=True)
class StackOptions:
    services: tuple[Service, ...] = ()  # none given: the example services (sagaflow.example)
    concurrency: int | None = None  # Celery's default: one process per CPU
    beat: bool = True
    flower_port: int | None = None  # None: FLOWER_PORT, if FLOWER_BASIC_AUTH is set
    dashboard: bool = True
    dashboard_port: int = DASHBOARD_PORT
    stop_timeout: float = 15.0
    ready_timeout: float = 90.0


def run_stack(
    settings: Settings,
    options: StackOptions,
    console: Console,
    *,
    dashboard_available: bool,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run the stack until a signal (returns 0) or until a process dies (returns 1)."""
    environ = os.environ if environ is None else environ
    root = Path.cwd()
    examples = not options.services
    services = EXAMPLE_SERVICES if examples else options.services
    _check_services(services, root, examples)
    if examples and not settings.definitions:
        settings = settings.with_overrides(definitions=(f"{EXAMPLE_PACKAGE}.definitions",))
    if not settings.definitions:
        raise ConfigurationError(
            "no saga definitions: set SAGAFLOW_DEFINITIONS (or --definitions) to the modules "
            "that define your sagas"
        )
    console.print(
        f"broker: {mask_url(settings.broker_url)}  store: {mask_url(settings.database_url)}",
        highlight=False,
    )
    flower_port = _flower_port(options, environ, console)
    dashboard_port = _dashboard_port(options, dashboard_available, console)
    for port, option in ((flower_port, "--flower-port"), (dashboard_port, "--dashboard-port")):
        if port is not None and not _port_free(port):
            raise ConfigurationError(f"port {port} on {HOST} is in use: choose another {option}")

    env = _environment(settings, environ, root, examples)
    ensure_home(settings)
    _migrate(settings, console)
    if examples:
        _prepare_examples(env, root, console)
    return _run_processes(
        settings, options, services, env, root, flower_port, dashboard_port, console
    )


def _environment(
    settings: Settings, environ: Mapping[str, str], root: Path, examples: bool
) -> dict[str, str]:
    """Every stack process's environment: ours, with the settings and the repository root."""
    env = {
        **environ,
        **settings.to_env(),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), environ.get("PYTHONPATH")])),
    }
    if examples:
        env["WORKERS_DATABASE_URL"] = environ.get("WORKERS_DATABASE_URL") or (
            # its own SQLite file: the store's stays free of the services' writes
            f"sqlite:///{settings.home / 'services.db'}"
            if embedded(settings.database_url)
            else settings.database_url
        )
    return env


def _run_processes(
    settings: Settings,
    options: StackOptions,
    services: tuple[Service, ...],
    env: dict[str, str],
    root: Path,
    flower_port: int | None,
    dashboard_port: int | None,
    console: Console,
) -> int:
    """Start the processes and watch them until a signal (returns 0) or a death (returns 1)."""
    hidden = secrets_in(env)
    log_dir = (settings.home / "stack-logs").resolve()
    group = WorkerGroup(env, log_dir, cwd=root)
    app = create_app("sagaflow-stack", settings)
    try:
        check_broker(app, settings.broker_url)
    except BrokerUnavailable:
        app.close()
        raise
    code = 0
    with _Signals() as signals:
        try:
            rows = _start_processes(group, settings, options, services, flower_port, dashboard_port)
            with console.status(f"starting {len(rows)} processes…"), signals.interruptible():
                group.wait_ready(app, timeout=options.ready_timeout)
            console.print(_table(rows))
            console.print("[bold green]stack ready[/]; Ctrl-C to stop", highlight=False)
            with signals.interruptible():
                dead = _watch(group)
            _report_death(dead, console, hidden)
            code = 1
        except StackStopRequested as stop:
            console.print(f"{stop}: stopping…", highlight=False)
        except WorkerStartError as exc:  # printed whole: the end of the log says why
            console.print("[bold red]stack not started:[/]")
            console.print(scrub(str(exc), secrets=hidden), markup=False, highlight=False)
            code = 1
        finally:
            names = [w.spec.name for w in group.workers if w.alive]
            started = time.monotonic()
            group.stop(timeout=options.stop_timeout)
            app.close()
            if names:
                console.print(
                    f"stopped {', '.join(names)} in {time.monotonic() - started:.1f}s",
                    highlight=False,
                )
    return code


def _start_processes(
    group: WorkerGroup,
    settings: Settings,
    options: StackOptions,
    services: tuple[Service, ...],
    flower_port: int | None,
    dashboard_port: int | None,
) -> list[tuple[WorkerProcess, str]]:
    """Start every process; returns each with its queue or URL, for the table."""

    def worker(name: str, module: str, queue: str) -> tuple[WorkerProcess, str]:
        spec = WorkerSpec(name, module, [queue], pool="prefork", concurrency=options.concurrency)
        return group.start(spec), queue

    rows = [worker("orchestrator", "sagaflow.worker", settings.queue)]
    rows += [worker(s.name, s.module, s.queue) for s in services]
    if options.beat:
        schedule = (settings.home / "celerybeat-schedule").resolve()
        beat = _celery("beat", "-s", str(schedule), "-l", "info")
        every = f"sagaflow.recover every {settings.recover_interval:g}s"
        rows.append((group.start(CommandSpec("beat", beat)), every))
    flower_url = None
    if flower_port is not None:
        flower_url = f"http://{HOST}:{flower_port}"
        # The password reaches Flower in its environment (FLOWER_BASIC_AUTH), never in argv.
        flower = _celery("flower", f"--port={flower_port}", f"--address={HOST}")
        spec = CommandSpec("flower", flower, url=f"{flower_url}/healthcheck")
        rows.append((group.start(spec), f"{flower_url} (basic auth)"))
    if dashboard_port is not None:
        url = f"http://{HOST}:{dashboard_port}"
        args = [sys.executable, "-m", "sagaflow", "dashboard"]
        args += ["--host", HOST, "--port", str(dashboard_port)]
        if flower_url:
            args += ["--flower-url", flower_url]
        auth = " (basic auth)" if group.env.get("SAGAFLOW_DASHBOARD_AUTH") else ""
        rows.append((group.start(CommandSpec("dashboard", args, url=f"{url}/")), url + auth))
    return rows


def _check_services(services: tuple[Service, ...], root: Path, examples: bool) -> None:
    names = [s.name for s in services]
    clash = sorted({n for n in names if names.count(n) > 1 or n in _RESERVED})
    if clash:
        raise ConfigurationError(
            f"service names must be unique and not one of {', '.join(_RESERVED)}: "
            f"{', '.join(clash)}"
        )
    if examples and importlib.util.find_spec(f"{EXAMPLE_PACKAGE}.definitions") is None:
        raise ConfigurationError(
            f"without --service the stack runs the example services ({EXAMPLE_PACKAGE}), which "
            "this installation of sagaflow lacks: name your services with --service NAME=MODULE"
        )


def _flower_port(options: StackOptions, environ: Mapping[str, str], console: Console) -> int | None:
    auth = environ.get("FLOWER_BASIC_AUTH", "")
    asked = options.flower_port is not None
    if not auth:
        if asked:
            raise ConfigurationError(
                "--flower-port needs FLOWER_BASIC_AUTH=user:password: Flower never runs "
                "without a password"
            )
        console.print(
            "Flower not started: set FLOWER_BASIC_AUTH=user:password to run it "
            "(it never runs without a password)",
            style="yellow",
            highlight=False,
        )
        return None
    for entry in auth.split(","):
        user, _, password = entry.partition(":")
        if not user or not password:
            raise ConfigurationError("FLOWER_BASIC_AUTH must be user:password (comma-separated)")
    if importlib.util.find_spec("flower") is None:
        if asked:
            raise ConfigurationError(
                "Flower is not installed: pip install 'celery-sagaflow[flower]'"
            )
        console.print(
            "Flower not started: not installed (pip install 'celery-sagaflow[flower]')",
            style="yellow",
            highlight=False,
        )
        return None
    return options.flower_port or FLOWER_PORT


def _dashboard_port(options: StackOptions, available: bool, console: Console) -> int | None:
    if not options.dashboard:
        return None
    if not available:
        console.print(
            "dashboard not started: this sagaflow has no `sagaflow dashboard` command",
            style="yellow",
            highlight=False,
        )
        return None
    return options.dashboard_port


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _migrate(settings: Settings, console: Console) -> None:
    """`sagaflow db upgrade`."""
    from sagaflow.store.migrate import current_revision

    store = open_store(settings.database_url)
    store.ensure_database()
    try:
        store.upgrade()
        revision = current_revision(store)
    except SagaflowError:
        raise
    except Exception as exc:
        raise StoreUnavailable(
            f"cannot migrate {mask_url(settings.database_url)}: {driver_message(exc)}"
        ) from exc
    finally:
        store.dispose()
    console.print(f"store at revision {revision}", highlight=False)


def _prepare_examples(env: Mapping[str, str], root: Path, console: Console) -> None:
    """`python -m sagaflow.example.db` (compose's `migrate` service runs `workers.db`, the same
    module): the example services' tables, with their balances and stock reset."""
    done = subprocess.run(
        [sys.executable, "-m", f"{EXAMPLE_PACKAGE}.db"],
        env=dict(env),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    hidden = secrets_in(env)
    if done.returncode != 0:
        # Its last line says why (the whole stderr would be a traceback if it crashed).
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        why = scrub(lines[-1].strip() if lines else "no output", secrets=hidden)
        raise ConfigurationError(
            f"`python -m {EXAMPLE_PACKAGE}.db` failed (exit {done.returncode}): {why}"
        )
    console.print(
        scrub(done.stdout.strip(), secrets=hidden), style="dim", highlight=False, markup=False
    )


# Variables of a stack process's environment whose secrets never reach the terminal.
_URL_VARIABLES = (
    "SAGAFLOW_DATABASE_URL",
    "SAGAFLOW_BROKER_URL",
    "SAGAFLOW_RESULT_BACKEND",
    "WORKERS_DATABASE_URL",
)
_AUTH_VARIABLES = ("FLOWER_BASIC_AUTH", "SAGAFLOW_DASHBOARD_AUTH")  # user:password[,...]


def secrets_in(env: Mapping[str, str]) -> set[str]:
    """The passwords in the URLs and basic-auth settings of `env`."""
    found = {s for name in _URL_VARIABLES for s in secrets_of(env.get(name, ""))}
    for name in _AUTH_VARIABLES:
        for entry in env.get(name, "").split(","):
            found.add(entry.partition(":")[2])
    return {s for s in found if s}


def check_broker(app: Celery, broker_url: str) -> None:
    """Connect to the broker once: an unreachable one is said at once, not after the workers'
    ready timeout (they would wait for it, retrying)."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0, timeout=10)
    except Exception as exc:  # kombu's OperationalError, or a transport's own error
        raise BrokerUnavailable(f"broker {mask_url(broker_url)} unavailable: {exc}") from exc


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "sagaflow.worker", *args]


class _Signals:
    """SIGINT and SIGTERM, noted whenever they come but raised as StackStopRequested only inside
    `interruptible()` (waiting), never in the middle of starting a process, printing or
    stopping."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._raise = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name
        if self._raise:
            self._raise = False
            raise StackStopRequested(self.received)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        if self.received:
            raise StackStopRequested(self.received)
        self._raise = True
        try:
            yield
        finally:
            self._raise = False

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _watch(group: WorkerGroup) -> WorkerProcess:
    """Block until a process exits on its own (a signal to us interrupts this first)."""
    while True:
        for worker in group.workers:
            if not worker.alive:
                return worker
        time.sleep(0.2)


def _report_death(dead: WorkerProcess, console: Console, hidden: set[str]) -> None:
    console.print(
        f"[bold red]{dead.spec.name} (pid {dead.process.pid}) exited with code "
        f"{dead.process.returncode}[/]; end of {dead.log_path}:",
        highlight=False,
    )
    console.print(scrub(dead.log_tail(20), secrets=hidden), markup=False, highlight=False)
    console.print("stopping the other processes…")


def _table(rows: list[tuple[WorkerProcess, str]]) -> Table:
    table = Table(title="sagaflow stack")
    table.add_column("process", no_wrap=True, min_width=12)
    table.add_column("pid", justify="right", no_wrap=True, min_width=7)
    table.add_column("queue / URL", overflow="fold")
    table.add_column("log", overflow="fold")
    for worker, where in rows:
        table.add_row(worker.spec.name, str(worker.process.pid), where, _shown(worker.log_path))
    return table


def _shown(path: Path) -> str:
    """The path relative to the working directory when it is below it (shorter to read)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
