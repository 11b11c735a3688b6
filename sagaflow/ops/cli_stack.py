"""`sagaflow db`, `worker`, `demo`, `dashboard` and `stack`: the commands that prepare the store
and run sagaflow's processes (the saga commands are in sagaflow.ops.cli)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import click

from sagaflow.errors import ConfigurationError, SagaflowError, StoreUnavailable
from sagaflow.ops.cli_context import console, print_json, settings_of
from sagaflow.ops.cli_errors import EXIT_ERROR, SECONDS, err_console
from sagaflow.store.factory import open_store
from sagaflow.terminal import driver_message
from sagaflow.urls import mask_url

# What `sagaflow dashboard` needs beyond a service worker's install (the `dashboard` extra).
DASHBOARD_MODULES = ("flask", "waitress", "prometheus_client")
DASHBOARD_INSTALL = "pip install 'celery-sagaflow[dashboard]'"


def dashboard_missing() -> list[str]:
    """The dashboard's modules this install lacks."""
    return [name for name in DASHBOARD_MODULES if importlib.util.find_spec(name) is None]


@click.group()
def db() -> None:
    """The saga store's schema."""


@db.command()
@click.option("--revision", default="head", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def upgrade(ctx: click.Context, revision: str, as_json: bool) -> None:
    """Create or migrate sagaflow's tables (Alembic)."""
    settings = settings_of(ctx)
    store = open_store(settings.database_url)
    store.ensure_database()
    try:
        store.upgrade(revision)
    except SagaflowError:
        raise
    except Exception as exc:
        raise StoreUnavailable(
            f"cannot migrate {mask_url(settings.database_url)}: {driver_message(exc)}"
        ) from exc
    from sagaflow.store.migrate import current_revision

    reached = current_revision(store)
    if as_json:
        print_json({"store": mask_url(settings.database_url), "revision": reached})
    else:
        click.echo(f"{mask_url(settings.database_url)} at revision {reached}")


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
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


@click.command()
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


@click.command()
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
    missing = dashboard_missing()
    if missing:
        raise ConfigurationError(
            f"the dashboard needs {', '.join(missing)}, not installed here: {DASHBOARD_INSTALL}"
        )
    from sagaflow.ops.dashboard import create_dashboard, parse_auth, serve

    settings = settings_of(ctx)
    app = create_dashboard(
        settings, flower_url=flower_url, auth=parse_auth(auth), actions=enable_actions
    )
    open_store(settings.database_url).ping()  # fail now, with the reason, not on the first page
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


@click.command()
@click.option(
    "--service",
    "services",
    multiple=True,
    callback=_stack_services,
    metavar="NAME=MODULE[:QUEUE]",
    help="A service worker, `celery -A MODULE worker -Q QUEUE` (QUEUE defaults to NAME); "
    "repeat for each. Default: the example services (sagaflow.example, the repository's workers/).",
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
    root = ctx.find_root().command  # the `sagaflow` group, which imports this module
    available = isinstance(root, click.Group) and "dashboard" in root.commands
    missing = dashboard_missing() if available else []
    if missing:
        console.print(
            f"dashboard not started: {', '.join(missing)} not installed ({DASHBOARD_INSTALL})",
            style="yellow",
            highlight=False,
        )
        options = dataclasses.replace(options, dashboard=False)
    sys.exit(run_stack(settings_of(ctx), options, console, dashboard_available=available))
