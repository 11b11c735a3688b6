"""`sagaflow quarantine`: the messages workers refused, to read, drop or replay."""

from __future__ import annotations

import base64
import json

import click
from rich.table import Table

from sagaflow.client.saga_client import SagaClient
from sagaflow.core.quarantine import QuarantineReason
from sagaflow.ops.cli_context import console, print_table
from sagaflow.ops.quarantine_admin import QuarantineAdmin
from sagaflow.ops.render import body_text, quarantined_json

BODY_PREVIEW_CHARS = 4_000
REASONS = [reason.value for reason in QuarantineReason]


def _admin(ctx: click.Context) -> QuarantineAdmin:
    from sagaflow.config import Settings

    settings = ctx.find_object(Settings)
    assert settings is not None
    return QuarantineAdmin(SagaClient(settings))


@click.group()
def quarantine() -> None:
    """Messages a worker took off its queue because they could not be a valid task.

    Each was acknowledged (so it stopped no worker) and kept here: read it, then drop it or,
    once what refused it is fixed, replay it onto its queue."""


@quarantine.command(name="list")
@click.option("--reason", type=click.Choice(REASONS), help="Only messages refused for this.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_command(
    ctx: click.Context, reason: str | None, limit: int, offset: int, as_json: bool
) -> None:
    """The quarantined messages, newest first."""
    admin = _admin(ctx)
    records = admin.newest(limit, offset, QuarantineReason(reason) if reason else None)
    if as_json:
        click.echo(
            json.dumps(
                [quarantined_json(r, with_body=False) for r in records], indent=2, default=str
            )
        )
        return
    if not records:
        console.print("The quarantine is empty." if not reason else f"No {reason} messages.")
        return
    table = Table(title=f"Quarantined messages ({sum(admin.counts().values())} in all)")
    table.add_column("id", no_wrap=True)
    table.add_column("received (UTC)", no_wrap=True)
    table.add_column("queue", overflow="fold")
    table.add_column("task", overflow="fold")
    table.add_column("reason", no_wrap=True)
    table.add_column("detail", overflow="fold", ratio=1)
    for record in records:
        table.add_row(
            record.id[:12],
            record.received_at.strftime("%Y-%m-%d %H:%M:%S"),
            record.queue or "-",
            record.task or "-",
            record.reason.value,
            record.detail[:200],
        )
    print_table(table)


@quarantine.command()
@click.argument("record_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the body in full).")
@click.pass_context
def show(ctx: click.Context, record_id: str, as_json: bool) -> None:
    """One quarantined message: where it was, why it was refused, its headers and body.

    RECORD_ID may be the first characters of the id that `list` shows."""
    record = _admin(ctx).get(record_id)
    if as_json:
        click.echo(json.dumps(quarantined_json(record), indent=2, default=str))
        return
    cut = " (cut: cannot replay)" if record.truncated else ""
    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in (
        ("id", record.id),
        ("reason", f"{record.reason.value}: {record.detail}"),
        ("received", record.received_at.isoformat()),
        ("queue", record.queue or "-"),
        ("task", record.task or "-"),
        ("task id", record.task_id or "-"),
        ("saga", record.saga_id or "-"),
        ("worker", record.hostname or "-"),
        ("content", f"{record.content_type} ({record.content_encoding})"),
        ("size", f"{record.body_size} bytes{cut}"),
        ("note", record.note or "-"),
        ("headers", json.dumps(record.headers, default=str)[:2000]),
    ):
        table.add_row(label, value)
    print_table(table)
    text = body_text(record.body)
    if text is None:
        shown = base64.b64encode(record.body).decode()
        console.print("[bold]body[/] (base64, not UTF-8 text):", highlight=False)
    else:
        shown = text
        console.print("[bold]body[/]:", highlight=False)
    if len(shown) > BODY_PREVIEW_CHARS:
        shown = shown[:BODY_PREVIEW_CHARS] + f"... ({len(shown) - BODY_PREVIEW_CHARS} more; --json)"
    click.echo(shown)


@quarantine.command()
@click.argument("record_ids", nargs=-1)
@click.option("--all", "drop_everything", is_flag=True, help="Drop every quarantined message.")
@click.option("--reason", type=click.Choice(REASONS), help="With --all: only these.")
@click.pass_context
def drop(
    ctx: click.Context, record_ids: tuple[str, ...], drop_everything: bool, reason: str | None
) -> None:
    """Forget quarantined messages for good."""
    if bool(record_ids) == drop_everything:
        raise click.UsageError("give message ids or --all (not both)")
    if reason and not drop_everything:
        raise click.UsageError("--reason goes with --all")
    admin = _admin(ctx)
    if drop_everything:
        count = admin.drop_all(QuarantineReason(reason) if reason else None)
        console.print(f"Dropped {count} quarantined messages.")
        return
    dropped = admin.drop(record_ids)
    console.print(f"Dropped {len(dropped)}: {', '.join(d[:12] for d in dropped)}")


@quarantine.command()
@click.argument("record_ids", nargs=-1, required=True)
@click.option(
    "--force", is_flag=True, help="Replay even a step message whose failure its saga was told of."
)
@click.option("--queue", help="Replay onto this queue instead (a misrouted message).")
@click.pass_context
def replay(ctx: click.Context, record_ids: tuple[str, ...], force: bool, queue: str | None) -> None:
    """Put quarantined messages back on their queues, byte for byte, and drop them here.

    For messages refused for something since fixed (a worker that lacked the task). A message
    that is still wrong is quarantined again, as a new record."""
    admin = _admin(ctx)
    for record_id in record_ids:
        record, sent_to = admin.replay(record_id, force=force, queue=queue)
        console.print(f"Replayed {record.id[:12]} onto queue {sent_to!r}.", highlight=False)
