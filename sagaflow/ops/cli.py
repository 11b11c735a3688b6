"""The `sagaflow` command: start sagas, inspect them, run workers and the demo.

This module holds the group and the saga commands; sagaflow.ops.cli_stack the commands that
run processes (db, worker, demo, dashboard, stack), sagaflow.ops.cli_quarantine `quarantine`.

Built on SagaClient and the store's public API. Every option can also be set with its SAGAFLOW_*
environment variable. Exit codes: 0 success; 1 error (or, with `start --wait`, the saga did not
complete); 2 bad usage; 3 saga not found; 4 store or broker unavailable; 5 timed out waiting;
130 interrupted. Errors are one line (sagaflow.ops.cli_errors), JSON under `--json`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from sagaflow.client.saga_client import SagaClient
from sagaflow.client.validation import parse_since
from sagaflow.config import Settings
from sagaflow.core.definitions import SagaState, load_definitions
from sagaflow.core.machine import SagaRecord
from sagaflow.core.search import FieldMatch, field_matches
from sagaflow.errors import DefinitionError, InvalidSagaInput
from sagaflow.ops import render
from sagaflow.ops.cli_context import (
    console,
    full_saga_id,
    print_json,
    print_table,
    settings_of,
    wait_options,
)
from sagaflow.ops.cli_errors import (
    EXIT_ERROR,
    SECONDS,
    BadInput,
    ErrorHandlingGroup,
    check_urls,
    err_console,
    load_json,
    quiet_interrupts,
    read_text_file,
)
from sagaflow.ops.cli_quarantine import quarantine
from sagaflow.ops.cli_stack import dashboard, db, demo, stack, worker
from sagaflow.ops.explain import next_actions, waiting_on


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
    # As `celery -A`: definitions named from the working directory import without PYTHONPATH
    # (last on the path: a module of the same name installed elsewhere still wins).
    with contextlib.suppress(OSError):  # a working directory deleted under us
        if ctx.obj.definitions and os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
    if ctx.invoked_subcommand is not None:
        check_urls(ctx.obj)


def client_of(ctx: click.Context) -> SagaClient:
    return SagaClient(settings_of(ctx))


def _key_columns(ctx: click.Context, sagas: list[SagaRecord]) -> list[str]:
    """The key fields the listed sagas' types declare, in order of first appearance."""
    settings = settings_of(ctx)
    if not settings.definitions or not sagas:
        return []
    try:
        registry = load_definitions(settings.definitions)
    except DefinitionError as exc:
        click.echo(f"(no key columns: {exc})", err=True)
        return []
    return registry.keys_of_all(saga.saga_type for saga in sagas)


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
    option = "--data-file" if data_file is not None else "--data"
    try:
        data = load_json(data_text, option)
    except BadInput as exc:
        raise click.UsageError(str(exc), ctx) from None
    if not isinstance(data, dict):
        raise click.UsageError(
            f"{option}: saga input must be a JSON object, got {type(data).__name__}", ctx
        )
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
        if saga.steps:
            print_table(render.saga_steps_table(saga))
        console.print("state:", render.state_text(saga.state))
        if saga.error:
            console.print(f"error: {saga.error}", highlight=False)
    if saga.state is not SagaState.COMPLETED:
        sys.exit(EXIT_ERROR)


@cli.command()
@click.argument("saga_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, saga_id: str, as_json: bool) -> None:
    """Where saga SAGA_ID is, step by step, and why."""
    client = client_of(ctx)
    saga = client.get(full_saga_id(client, saga_id))
    if as_json:
        print_json(render.saga_json(saga))
        return
    print_table(render.saga_steps_table(saga))
    line = render.state_text(saga.state)
    console.print("type:", saga.saga_type, " state:", line, " age:", render.age(saga.created_at))
    if saga.error:
        console.print(f"error: {saga.error}", highlight=False)
    waiting = waiting_on(saga)
    if waiting is not None:
        console.print(
            f"waiting on step {waiting.step!r} ({waiting.status.value}): {waiting.phase.value} "
            f"task {waiting.task} on queue {waiting.queue!r} for {render.age(waiting.since)}",
            highlight=False,
        )
    if (ignored := client.store.ignored(saga.saga_id)).count:
        console.print(ignored.summary(), highlight=False)
    for action in next_actions(saga):
        console.print(f"next: {action.command}  ({action.what})", highlight=False)


def _since_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parse_since(value)
    except (ValueError, OverflowError) as exc:  # OverflowError: a date past the year 9999
        raise click.BadParameter(str(exc)) from None


def _where_option(
    _ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]
) -> list[FieldMatch]:
    try:
        return field_matches(value)
    except InvalidSagaInput as exc:
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
@click.option(
    "--where",
    "where",
    multiple=True,
    callback=_where_option,
    metavar="KEY=VALUE",
    help="Only sagas whose input has this value at KEY (nested keys with dots: customer.id=c-1; "
    "a number, true or false matches as text too). Repeat to combine.",
)
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
    where: list[FieldMatch],
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """Sagas, newest first. Columns for the input fields each saga type declares as its keys
    (Saga(keys=...)) when SAGAFLOW_DEFINITIONS names the definitions."""
    sagas = client_of(ctx).list_sagas(
        state=state,
        saga_type=saga_type,
        since=since,
        id_prefix=id_prefix,
        where=where,
        limit=limit,
        offset=offset,
    )
    if as_json:
        print_json([render.saga_json(s, with_steps=False) for s in sagas])
        return
    print_table(render.saga_list_table(sagas, keys=_key_columns(ctx, sagas)))
    if len(sagas) == limit:
        console.print(f"(first {limit}; next page: --offset {offset + limit})", style="dim")


@cli.command()
@click.argument("saga_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def history(ctx: click.Context, saga_id: str, as_json: bool) -> None:
    """The transition log of saga SAGA_ID."""
    client = client_of(ctx)
    rows = client.history(full_saga_id(client, saga_id))
    if as_json:
        print_json([render.history_json(r) for r in rows])
        return
    print_table(render.history_table(rows))


@cli.command(name="cancel")
@click.argument("saga_id")
@click.option("--reason", default="", help="Why (kept in the history and the saga's error).")
@wait_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def cancel_command(
    ctx: click.Context, saga_id: str, reason: str, wait: bool, timeout: float, as_json: bool
) -> None:
    """Cancel a running saga: the step in flight finishes, then completed steps are undone."""
    client = client_of(ctx)
    saga_id = full_saga_id(client, saga_id, acting=True)
    version = client.cancel(saga_id, reason)
    _done(client, saga_id, "cancel requested", version, wait, timeout, as_json, UNDONE)


@cli.command()
@click.argument("saga_id")
@wait_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def retry(ctx: click.Context, saga_id: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Resume a saga stopped in compensation_failed at the compensation that failed."""
    client = client_of(ctx)
    saga_id = full_saga_id(client, saga_id, acting=True)
    version = client.retry(saga_id)
    _done(client, saga_id, "compensation retried", version, wait, timeout, as_json, UNDONE)


@cli.command(name="mark-compensated")
@click.argument("saga_id")
@click.argument("step")
@click.option("--reason", required=True, help="What was done by hand (kept in the history).")
@wait_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def mark_compensated_command(
    ctx: click.Context,
    saga_id: str,
    step: str,
    reason: str,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Record that STEP's failed compensation was done by hand; compensation carries on."""
    client = client_of(ctx)
    saga_id = full_saga_id(client, saga_id, acting=True)
    version = client.mark_compensated(saga_id, step, reason)
    done = f"{step} marked compensated"
    _done(client, saga_id, done, version, wait, timeout, as_json, UNDONE)


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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
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
    as_json: bool,
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
    saga_id = full_saga_id(client, saga_id, acting=True)
    version = client.resolve(saga_id, step, applied, reason, result)
    done = f"{step} resolved as {'applied' if applied else 'not applied'}"
    _done(client, saga_id, done, version, wait, timeout, as_json, SETTLED)


# The states an operator's action hoped for, with --wait: anything else exits 1.
UNDONE = frozenset({SagaState.FAILED, SagaState.CANCELLED})  # compensation ran to its end
SETTLED = frozenset(s for s in SagaState if s.is_terminal and not s.needs_operator)


def _done(
    client: SagaClient,
    saga_id: str,
    done: str,
    version: int,
    wait: bool,
    timeout: float,
    as_json: bool,
    hoped_for: frozenset[SagaState],
) -> None:
    """Say what an operator's action did; with `wait`, show where the saga ended up."""
    if not wait:
        if as_json:
            print_json({"saga_id": saga_id, "done": done, "version": version})
        else:
            click.echo(f"saga {saga_id}: {done}")
        return
    if not as_json:
        click.echo(f"saga {saga_id}: {done}")
    with err_console.status(f"saga {saga_id} running…"):
        saga = client.wait(saga_id, timeout=timeout, newer_than=version)
    if as_json:
        print_json(render.saga_json(saga))
    else:
        print_table(render.saga_steps_table(saga))
        console.print("state:", render.state_text(saga.state))
        if saga.error:
            console.print(f"error: {saga.error}", highlight=False)
    if saga.state not in hoped_for:
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


cli.add_command(db)
cli.add_command(worker)
cli.add_command(demo)
cli.add_command(dashboard)
cli.add_command(stack)
cli.add_command(quarantine)


def main() -> None:
    quiet_interrupts()
    cli(prog_name="sagaflow")


if __name__ == "__main__":
    main()
