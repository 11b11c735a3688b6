"""What the modules of the `sagaflow` command share: the settings its group built, the console,
JSON output and the options of every command that can wait."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from sagaflow.client.saga_client import SagaClient
from sagaflow.client.validation import check_saga_id
from sagaflow.config import Settings
from sagaflow.ops.cli_errors import SECONDS

console = Console()
UNBOUNDED = 100_000  # a width no table reaches, to measure one's natural width


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


def print_table(table: Table) -> None:
    """On a terminal a table fits the window, its free-text columns wrapping. Piped, it is
    printed at its full width: rich would otherwise squeeze it into COLUMNS (80), cutting ids
    and names and folding the error column to a character per line."""
    if console.is_terminal:
        console.print(table)
        return
    natural = Measurement.get(console, console.options.update(width=UNBOUNDED), table).maximum
    narrower = console.width
    console.width = max(narrower, natural)  # Console.print(width=) can only narrow
    try:
        console.print(table)
    finally:
        console.width = narrower


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


SHOWN_MATCHES = 5


GENERATED_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MIN_ACTING_PREFIX = 8


def full_saga_id(client: SagaClient, text: str, *, acting: bool = False) -> str:
    """The saga id `text` is, or begins when only one saga's id does (the demo prints the first
    8 characters); a usage error naming the sagas it could be otherwise. An operator action
    (`acting`) takes a prefix only of a generated id, 8 characters or more: ids a producer
    chose (order-1, order-12) are too easily the start of another's."""
    check_saga_id(text)
    matches = [s.saga_id for s in client.list_sagas(id_prefix=text, limit=SHOWN_MATCHES + 1)]
    if text in matches or not matches or client.store.load(text) is not None:
        return text  # the id itself (or no saga: the command says so, as for any id)
    if len(matches) == 1:
        (match,) = matches
        if acting and (len(text) < MIN_ACTING_PREFIX or not GENERATED_ID.match(match)):
            raise click.BadParameter(
                f"no saga {text!r}; did you mean {match}? An operator action takes the whole id "
                f"(or {MIN_ACTING_PREFIX}+ characters of a generated one)",
                param_hint="SAGA_ID",
            )
        return match
    shown = ", ".join(matches[:SHOWN_MATCHES]) + (", ..." if len(matches) > SHOWN_MATCHES else "")
    raise click.BadParameter(
        f"{text!r} begins the ids of several sagas ({shown}): give more of it",
        param_hint="SAGA_ID",
    )
