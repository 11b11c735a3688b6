"""What the modules of the `sagaflow` command share: the settings its group built, the console,
JSON output and the options of every command that can wait."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

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
