"""The `sagaflow` command: start sagas, inspect them, run workers and the demo.

Built on SagaClient and the store's public API. Every option can also be set with its SAGAFLOW_*
environment variable. Exit codes: 0 success; 1 error (or, with `start --wait`, the saga did not
complete); 2 bad usage; 3 saga not found; 4 store or broker unavailable; 5 timed out waiting;
130 interrupted. Errors are one line (sagaflow.ops.cli_errors), JSON under `--json`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from sqlalchemy.engine import make_url

from sagaflow.client.saga_client import SagaClient, parse_since
from sagaflow.config import Settings
from sagaflow.core.definitions import SagaState
from sagaflow.errors import ConfigurationError, InvalidSagaInput, SagaflowError, StoreUnavailable
from sagaflow.ops import render
from sagaflow.ops.cli_errors import (
    EXIT_ERROR,
    SECONDS,
    BadInput,
    ErrorHandlingGroup,
    check_urls,
    driver_message,
    err_console,
    load_json,
    read_text_file,
)
from sagaflow.ops.cli_quarantine import quarantine
from sagaflow.store.sql import SagaStore
from sagaflow.urls import mask_url

console = Console()


def settings_of(ctx: click.Context) -> Settings:
    settings = ctx.find_object(Settings)
    assert settings is not None
    return settings


def wait_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--wait/--no-wait` and `--timeout`, the same on every command that can wait."""
    command = click.option(
        "--timeout", default=60.0, show_default=True, type=SECONDS, help="Seconds to wait."
    )(command)
    return click.option("--wait/--no-wait", default=False, help="Wait until the saga finishes.")(
        command
    )


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


@click.group(cls=ErrorHandlingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--broker-url", envvar="SAGAFLOW_BROKER_URL", help="Celery broker URL.")
@click.option("--database-url", envvar="SAGAFLOW_DATABASE_URL", help="Saga store URL.")
@click.option("--queue", envvar="SAGAFLOW_QUEUE", help="Orchestrator queue (default sagaflow).")
@click.option(
    "--definitions", envvar="SAGAFLOW_DEFINITIONS", help="Saga definition modules, comma-separated."
)
@click.option(
    "--home",
    envvar="SAGAFLOW_HOME",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the embedded store and broker (default .sagaflow).",
)
@click.version_option(package_name="celery-sagaflow")
@click.pass_context
def cli(
    ctx: click.Context,
    broker_url: str | None,
    database_url: str | None,
    queue: str | None,
    definitions: str | None,
    home: Path | None,
) -> None:
    """sagaflow: saga orchestration on Celery, with saga state in SQL."""
    overrides: dict[str, Any] = {
        "broker_url": broker_url,
        "database_url": database_url,
        "queue": queue,
        "home": home,
    }
    if definitions is not None:
        overrides["definitions"] = tuple(d.strip() for d in definitions.split(",") if d.strip())
    ctx.obj = Settings.from_env(**overrides)
    if ctx.invoked_subcommand is not None:
        check_urls(ctx.obj)


def client_of(ctx: click.Context) -> SagaClient:
    return SagaClient(settings_of(ctx))


@cli.command()
@click.argument("saga_type")
@click.option("--data", "data_text", default="{}", help="Saga input as a JSON object.")
@click.option("--data-file", type=click.File("rb"), help="Read the input JSON from a file ('-').")
@click.option("--id", "saga_id", help="Saga id to use (default: a new UUID).")
@click.option(
    "--deadline",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds the saga may run before it is stopped and compensated (overrides the "
    "definition's).",
)
@wait_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def start(
    ctx: click.Context,
    saga_type: str,
    data_text: str,
    data_file: Any,
    saga_id: str | None,
    deadline: float | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Start a saga of SAGA_TYPE; prints its id."""
    client = client_of(ctx)
    if data_file is not None:
        # The input's JSON may carry whitespace the stored input does not: some room for it.
        limit = 4 * client.settings.max_input_bytes
        data_text = read_text_file(data_file, "--data-file", limit)
    try:
        data = load_json(data_text, "--data-file" if data_file is not None else "--data")
    except BadInput as exc:
        raise InvalidSagaInput(str(exc)) from None
    new_id = client.start(saga_type, data, saga_id=saga_id, deadline=deadline)
    if not wait:
        if as_json:
            print_json({"saga_id": new_id})
        else:
            click.echo(new_id)
        return
    with err_console.status(f"saga {new_id} running…"):
        saga = client.wait(new_id, timeout=timeout)
    if as_json:
        print_json(render.saga_json(saga))
    else:
        console.print(render.saga_steps_table(saga))
        console.print("state:", render.state_text(saga.state))
    if saga.state is not SagaState.COMPLETED:
        sys.exit(EXIT_ERROR)


@cli.command()
@click.argument("saga_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, saga_id: str, as_json: bool) -> None:
    """Where saga SAGA_ID is, step by step, and why."""
    client = client_of(ctx)
    saga = client.get(saga_id)
    if as_json:
        print_json(render.saga_json(saga))
        return
    console.print(render.saga_steps_table(saga))
    line = render.state_text(saga.state)
    console.print("type:", saga.saga_type, " state:", line, " age:", render.age(saga.created_at))
    if saga.error:
        console.print(f"error: {saga.error}", highlight=False)
    if not saga.state.is_terminal and saga.current_step is not None:
        step = saga.steps[saga.current_step]
        started = (
            step.compensation_started_at
            if saga.state is SagaState.COMPENSATING
            else (step.started_at)
        )
        console.print(
            f"waiting on step {step.name!r} ({step.status.value}) for {render.age(started)}",
            highlight=False,
        )
    if (ignored := client.store.ignored(saga_id)).count:
        console.print(ignored.summary(), highlight=False)


def _since_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parse_since(value)
    except (ValueError, OverflowError) as exc:  # OverflowError: a date past the year 9999
        raise click.BadParameter(str(exc)) from None


@cli.command(name="list")
@click.option(
    "--state",
    type=click.Choice([s.value for s in SagaState]),
    help="Only sagas in this state.",
)
@click.option("--type", "saga_type", help="Only sagas of this type.")
@click.option(
    "--since",
    callback=_since_option,
    help="Only sagas started since: a duration ago (30m, 2h, 1d, 1w) or an ISO 8601 time.",
)
@click.option("--id-prefix", help="Only sagas whose id starts with this.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_command(
    ctx: click.Context,
    state: str | None,
    saga_type: str | None,
    since: datetime | None,
    id_prefix: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """Sagas, newest first."""
    sagas = client_of(ctx).list_sagas(
        state=state,
        saga_type=saga_type,
        since=since,
        id_prefix=id_prefix,
        limit=limit,
        offset=offset,
    )
    if as_json:
        print_json([render.saga_json(s, with_steps=False) for s in sagas])
        return
    console.print(render.saga_list_table(sagas))
    if len(sagas) == limit:
        console.print(f"(first {limit}; next page: --offset {offset + limit})", style="dim")


@cli.command()
@click.argument("saga_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def history(ctx: click.Context, saga_id: str, as_json: bool) -> None:
    """The transition log of saga SAGA_ID."""
    rows = client_of(ctx).history(saga_id)
    if as_json:
        print_json([render.history_json(r) for r in rows])
        return
    console.print(render.history_table(rows))


@cli.command(name="cancel")
@click.argument("saga_id")
@click.option("--reason", default="", help="Why (kept in the history and the saga's error).")
@wait_options
@click.pass_context
def cancel_command(
    ctx: click.Context, saga_id: str, reason: str, wait: bool, timeout: float
) -> None:
    """Cancel a running saga: the step in flight finishes, then completed steps are undone."""
    client = client_of(ctx)
    version = client.cancel(saga_id, reason)
    click.echo(f"saga {saga_id}: cancel requested")
    if wait:
        _wait_and_show(client, saga_id, timeout, version)


@cli.command()
@click.argument("saga_id")
@wait_options
@click.pass_context
def retry(ctx: click.Context, saga_id: str, wait: bool, timeout: float) -> None:
    """Resume a saga stopped in compensation_failed at the compensation that failed."""
    client = client_of(ctx)
    version = client.retry(saga_id)
    click.echo(f"saga {saga_id}: compensation retried")
    if wait:
        _wait_and_show(client, saga_id, timeout, version)


@cli.command(name="mark-compensated")
@click.argument("saga_id")
@click.argument("step")
@click.option("--reason", required=True, help="What was done by hand (kept in the history).")
@wait_options
@click.pass_context
def mark_compensated_command(
    ctx: click.Context, saga_id: str, step: str, reason: str, wait: bool, timeout: float
) -> None:
    """Record that STEP's failed compensation was done by hand; compensation carries on."""
    client = client_of(ctx)
    version = client.mark_compensated(saga_id, step, reason)
    click.echo(f"saga {saga_id}: {step} marked compensated")
    if wait:
        _wait_and_show(client, saga_id, timeout, version)


@cli.command(name="resolve")
@click.argument("saga_id")
@click.argument("step")
@click.option(
    "--applied/--not-applied",
    default=None,
    help="Whether STEP took effect (one of the two is required).",
)
@click.option("--reason", required=True, help="How you know (kept in the history).")
@click.option("--result", "result_text", help="With --applied: the step's result as JSON.")
@wait_options
@click.pass_context
def resolve_command(
    ctx: click.Context,
    saga_id: str,
    step: str,
    applied: bool | None,
    reason: str,
    result_text: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Say whether STEP of an escalated saga took effect; the saga carries on from there
    (forward if applied, compensating the steps before it if not)."""
    if applied is None:
        raise click.UsageError("say --applied or --not-applied")
    try:
        result = load_json(result_text, "--result") if result_text is not None else None
    except BadInput as exc:
        raise click.UsageError(str(exc)) from None
    client = client_of(ctx)
    version = client.resolve(saga_id, step, applied, reason, result)
    click.echo(f"saga {saga_id}: {step} resolved as {'applied' if applied else 'not applied'}")
    if wait:
        with err_console.status(f"saga {saga_id} running…"):
            saga = client.wait(saga_id, timeout=timeout, newer_than=version)
        console.print(render.saga_steps_table(saga))
        console.print("state:", render.state_text(saga.state))
        if saga.state in (SagaState.COMPENSATION_FAILED, SagaState.ESCALATED):
            sys.exit(EXIT_ERROR)


def _wait_and_show(client: SagaClient, saga_id: str, timeout: float, version: int) -> None:
    with err_console.status(f"saga {saga_id} compensating…"):
        saga = client.wait(saga_id, timeout=timeout, newer_than=version)
    console.print(render.saga_steps_table(saga))
    console.print("state:", render.state_text(saga.state))
    if saga.state not in (SagaState.FAILED, SagaState.CANCELLED):
        sys.exit(EXIT_ERROR)


@cli.command()
@click.option(
    "--older-than",
    type=SECONDS,
    help="Seconds without progress before a saga counts as stalled, or a requested saga as "
    "not started (default SAGAFLOW_STALL_TIMEOUT, 300).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def recover(ctx: click.Context, older_than: float | None, as_json: bool) -> None:
    """Start requested sagas whose start was lost, time out overdue steps, re-drive stalled
    sagas, publish lost outcome events (what beat runs periodically)."""
    from sagaflow.messaging.orchestrator_app import create_orchestrator_app, orchestrator_of

    settings = settings_of(ctx)
    app = create_orchestrator_app(settings)
    report = orchestrator_of(app).recover(
        settings.stall_timeout if older_than is None else older_than
    )
    if as_json:
        print_json(
            {
                "started": [{"saga_id": s} for s in report.started],
                "redriven": [
                    {"saga_id": s, "step": step, "state": state}
                    for s, step, state in report.redriven
                ],
                "republished": [{"saga_id": s, "event": e} for s, e in report.republished],
                "timed_out": [{"saga_id": s, "step": step} for s, step in report.timed_out],
                "retried": [{"saga_id": s, "step": step} for s, step in report.retried],
                "deadline_exceeded": [{"saga_id": s} for s in report.deadline_exceeded],
            }
        )
        return
    for saga_id in report.started:
        console.print(f"started {saga_id}: its start message never came", highlight=False)
    for saga_id, step in report.timed_out:
        console.print(f"timed out {saga_id}: step {step!r} (no outcome in time)", highlight=False)
    for saga_id, step in report.retried:
        console.print(f"retried {saga_id}: retriable step {step!r} sent again", highlight=False)
    for saga_id in report.deadline_exceeded:
        console.print(f"deadline passed for {saga_id}: stopping it", highlight=False)
    for saga_id, step, state in report.redriven:
        console.print(f"re-drove {saga_id}: step {step!r} sent again ({state})", highlight=False)
    for saga_id, event in report.republished:
        console.print(f"published {event} for {saga_id}", highlight=False)
    console.print(
        f"{len(report.started)} requested sagas started, "
        f"{len(report.timed_out)} steps timed out, {len(report.retried)} retriable steps retried, "
        f"{len(report.deadline_exceeded)} sagas past their deadline, "
        f"{len(report.redriven)} sagas re-driven, {len(report.republished)} events published"
    )


@cli.group()
def db() -> None:
    """The saga store's schema."""


@db.command()
@click.option("--revision", default="head", show_default=True)
@click.pass_context
def upgrade(ctx: click.Context, revision: str) -> None:
    """Create or migrate sagaflow's tables (Alembic)."""
    settings = settings_of(ctx)
    sqlite_path = make_url(settings.database_url).database
    if settings.database_url.startswith("sqlite") and sqlite_path and sqlite_path != ":memory:":
        Path(sqlite_path).parent.mkdir(parents=True, exist_ok=True)
    store = SagaStore(settings.database_url)
    try:
        store.upgrade(revision)
    except SagaflowError:
        raise
    except Exception as exc:
        raise StoreUnavailable(
            f"cannot migrate {mask_url(settings.database_url)}: {driver_message(exc)}"
        ) from exc
    from sagaflow.store.migrate import current_revision

    click.echo(f"{mask_url(settings.database_url)} at revision {current_revision(store)}")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--pool", default="prefork", show_default=True, help="Celery pool.")
@click.option("--concurrency", "-c", type=int, help="Worker processes/threads.")
@click.option("--migrate/--no-migrate", default=False, help="Run `db upgrade` first.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def worker(
    ctx: click.Context,
    pool: str,
    concurrency: int | None,
    migrate: bool,
    celery_args: tuple[str, ...],
) -> None:
    """Run the orchestrator: `celery -A sagaflow.worker worker -Q <queue>` plus CELERY_ARGS."""
    settings = settings_of(ctx)
    if migrate:
        ctx.invoke(upgrade)
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "sagaflow.worker",
        "worker",
        "-Q",
        settings.queue,
        "-P",
        pool,
        "-n",
        f"{settings.queue}@%h",
    ]
    if concurrency:
        command += ["-c", str(concurrency)]
    command += list(celery_args)
    env = {**os.environ, **settings.to_env()}
    os.execvpe(command[0], command, env)


@cli.command()
@click.option("--sagas", "count", default=24, show_default=True, type=click.IntRange(1, 100_000))
@click.option(
    "--home",
    "demo_home",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the demo's store, broker and logs (default: a new temporary folder).",
)
@click.option(
    "--timeout",
    default=120.0,
    show_default=True,
    type=SECONDS,
    help="Seconds to wait for the sagas.",
)
@click.pass_context
def demo(ctx: click.Context, count: int, demo_home: Path | None, timeout: float) -> None:
    """Run the order saga example end to end.

    Embedded (SQLite, filesystem broker) by default; set SAGAFLOW_BROKER_URL and
    SAGAFLOW_DATABASE_URL (or --broker-url, --database-url) to run it on Redis and PostgreSQL.
    """
    from sagaflow.devstack.demo import run_demo

    given = ctx.parent.params if ctx.parent is not None else {}
    ok = run_demo(
        count=count,
        home=demo_home,
        timeout=timeout,
        console=console,
        broker_url=given.get("broker_url"),
        database_url=given.get("database_url"),
    )
    if not ok:
        sys.exit(EXIT_ERROR)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8650, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--flower-url",
    envvar="SAGAFLOW_FLOWER_URL",
    help="Flower's address, to link each task to its Flower page.",
)
@click.option(
    "--auth",
    envvar="SAGAFLOW_DASHBOARD_AUTH",
    help="user:password for basic auth on every page (SAGAFLOW_DASHBOARD_AUTH).",
)
@click.option(
    "--enable-actions",
    is_flag=True,
    envvar="SAGAFLOW_DASHBOARD_ACTIONS",
    help="Allow cancel and retry from the dashboard (needs --auth).",
)
@click.pass_context
def dashboard(
    ctx: click.Context,
    host: str,
    port: int,
    flower_url: str | None,
    auth: str | None,
    enable_actions: bool,
) -> None:
    """Serve the saga dashboard, its JSON API (/api) and Prometheus metrics (/metrics)."""
    from sagaflow.ops.dashboard import create_dashboard, parse_auth, serve

    settings = settings_of(ctx)
    app = create_dashboard(
        settings, flower_url=flower_url, auth=parse_auth(auth), actions=enable_actions
    )
    SagaStore(settings.database_url).ping()  # fail now, with the reason, not on the first page
    mode = "operator actions enabled" if enable_actions else "read-only"
    protection = "basic auth" if auth else "no auth"
    err_console.print(
        f"sagaflow dashboard on http://{host}:{port}/ ({mode}, {protection}); store "
        f"{mask_url(settings.database_url)}",
        highlight=False,
    )
    try:
        serve(app, host, port)
    except (OSError, ValueError) as exc:  # the port is taken, the host unknown
        raise ConfigurationError(f"cannot serve on {host}:{port}: {exc}") from exc


def _stack_services(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> Any:
    from sagaflow.devstack.stack import Service

    try:
        return tuple(Service.parse(value) for value in values)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command()
@click.option(
    "--service",
    "services",
    multiple=True,
    callback=_stack_services,
    metavar="NAME=MODULE[:QUEUE]",
    help="A service worker, `celery -A MODULE worker -Q QUEUE` (QUEUE defaults to NAME); "
    "repeat for each. Default: the example services in workers/.",
)
@click.option(
    "--concurrency", "-c", type=click.IntRange(1), help="Processes per worker (default: CPUs)."
)
@click.option("--beat/--no-beat", default=True, help="Run beat (the recovery sweep).")
@click.option(
    "--flower-port",
    type=click.IntRange(1, 65535),
    help="Flower's port on 127.0.0.1 (default 5555); Flower runs only with "
    "FLOWER_BASIC_AUTH=user:password.",
)
@click.option("--dashboard/--no-dashboard", default=True, help="Run the saga dashboard.")
@click.option("--dashboard-port", default=8650, show_default=True, type=click.IntRange(1, 65535))
@click.pass_context
def stack(
    ctx: click.Context,
    services: Any,
    concurrency: int | None,
    beat: bool,
    flower_port: int | None,
    dashboard: bool,
    dashboard_port: int,
) -> None:
    """Run the whole stack as local processes until Ctrl-C: migrations, the orchestrator, the
    service workers, beat, Flower and the dashboard (what docker-compose.yml runs)."""
    from sagaflow.devstack.stack import StackOptions, run_stack

    options = StackOptions(
        services=services,
        concurrency=concurrency,
        beat=beat,
        flower_port=flower_port,
        dashboard=dashboard,
        dashboard_port=dashboard_port,
    )
    available = "dashboard" in cli.commands
    sys.exit(run_stack(settings_of(ctx), options, console, dashboard_available=available))


cli.add_command(quarantine)


def main() -> None:
    cli(prog_name="sagaflow")


if __name__ == "__main__":
    main()
