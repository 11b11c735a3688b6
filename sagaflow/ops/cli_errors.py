"""How the `sagaflow` command fails: one line (JSON under `--json`), an exit code, no traceback.

Exit codes: 0 success; 1 error (or, with `--wait`, the saga did not end as asked); 2 bad usage;
3 saga not found; 4 store or broker unavailable; 5 timed out waiting; 130 interrupted.
Every message goes through `scrub`, so no password from a URL reaches the terminal, even when a
driver's message echoes its connection string. SAGAFLOW_DEBUG=1 adds the traceback.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import click
import kombu.exceptions
import sqlalchemy as sa
from rich.console import Console
from rich.markup import escape

from sagaflow.client.saga_client import BrokerUnavailable
from sagaflow.config import Settings
from sagaflow.core.protocol import MAX_INPUT_DEPTH, input_problem
from sagaflow.errors import BadInput as BadInput
from sagaflow.errors import (
    QuarantinedMessageNotFound,
    SagaflowError,
    SagaNotFound,
    SagaTimeout,
    StoreUnavailable,
)
from sagaflow.terminal import driver_message
from sagaflow.urls import broker_url_problem, database_url_problem, mask_url, scrub

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4
EXIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130
DEBUG_ENV = "SAGAFLOW_DEBUG"
URL_ENV = (
    "SAGAFLOW_DATABASE_URL",
    "SAGAFLOW_BROKER_URL",
    "SAGAFLOW_RESULT_BACKEND",
    "WORKERS_DATABASE_URL",
)

err_console = Console(stderr=True)


class Seconds(click.types.FloatParamType):
    """A finite number of seconds, not negative: NaN or infinity would wait forever."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < 0:
            self.fail(f"{value!r} is not a finite number of seconds, 0 or more", param, ctx)
        return seconds


SECONDS = Seconds()


@dataclass(frozen=True)
class Failure:
    code: int
    type: str
    message: str


def exit_code_for(exc: SagaflowError) -> int:
    if isinstance(exc, SagaNotFound | QuarantinedMessageNotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, (StoreUnavailable, BrokerUnavailable)):
        return EXIT_UNAVAILABLE
    if isinstance(exc, SagaTimeout):
        return EXIT_TIMEOUT
    return EXIT_ERROR


def failure_of(exc: BaseException, settings: Settings | None) -> Failure:
    """What to tell the operator about `exc`."""
    if isinstance(exc, click.UsageError):
        hint = f" (see '{exc.ctx.command_path} -h')" if exc.ctx is not None else ""
        return Failure(EXIT_USAGE, "UsageError", exc.format_message() + hint)
    if isinstance(exc, click.ClickException):
        return Failure(exc.exit_code, type(exc).__name__, exc.format_message())
    if isinstance(exc, (click.Abort, KeyboardInterrupt, EOFError)):
        return Failure(EXIT_INTERRUPTED, "Interrupted", "interrupted")
    if isinstance(exc, SagaflowError):
        return Failure(exit_code_for(exc), type(exc).__name__, str(exc))
    if isinstance(exc, kombu.exceptions.OperationalError):  # kombu's for any transport's
        broker = mask_url(settings.broker_url) if settings else "the broker"
        return Failure(EXIT_UNAVAILABLE, "BrokerUnavailable", f"broker {broker} unavailable: {exc}")
    if isinstance(exc, sa.exc.DBAPIError):  # a driver error the store does not map itself
        store = mask_url(settings.database_url) if settings else "the saga store"
        return Failure(
            EXIT_UNAVAILABLE,
            "StoreUnavailable",
            f"saga store {store} failed: {driver_message(exc)}",
        )
    return Failure(
        EXIT_ERROR,
        type(exc).__name__,
        f"unexpected {type(exc).__name__}: {exc} (run with {DEBUG_ENV}=1 for the traceback)",
    )


def quiet_interrupts() -> None:
    """A Ctrl-C that lands inside a callback Python calls on its own (a lock released during an
    import) cannot reach the command: Python prints it as "Exception ignored in ..." with a
    traceback, and the command goes on. Say nothing then: the next Ctrl-C stops it, in one
    line, as any other."""
    default = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            default(unraisable)

    sys.unraisablehook = hook


def report(
    exc: BaseException, *, as_json: bool, settings: Settings | None, argv: Sequence[str]
) -> int:
    """Print `exc` as one line on stderr (or JSON on stdout); return the exit code."""
    failure = failure_of(exc, settings)
    urls = secret_sources(settings, argv)
    message = scrub(" ".join(failure.message.split()), urls)  # driver messages hold newlines
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        err_console.print(scrub(trace, urls), markup=False, highlight=False, soft_wrap=True)
    if as_json:
        error = {"type": failure.type, "message": message}
        click.echo(json.dumps({"error": error, "code": failure.code}))
    else:
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return failure.code


def secret_sources(settings: Settings | None, argv: Iterable[str]) -> list[str]:
    """Every URL this process may have been given, whose passwords must never be printed."""
    urls = [os.environ.get(name, "") for name in URL_ENV]
    # --database-url=URL is one argument
    urls += [arg.partition("=")[2] if arg.startswith("--") else arg for arg in argv]
    if settings is not None:
        urls += [settings.database_url, settings.broker_url, settings.result_backend or ""]
    return [url for url in urls if "://" in url]


class _ScrubbedLogRecords(logging.Filter):
    """Masks the passwords of `urls` in every record that logging's last resort prints (what
    the CLI shows of a library's warnings, as it configures no logging of its own)."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__()
        self.urls = urls

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub(record.getMessage(), self.urls), None
        return True


def scrub_warnings(argv: Sequence[str]) -> None:
    """Mask, in what logging prints, the passwords of the URLs in `argv` and the environment."""
    if logging.lastResort is not None:
        logging.lastResort.addFilter(_ScrubbedLogRecords(secret_sources(None, argv)))


def check_urls(settings: Settings) -> None:
    """Refuse a store or broker URL that cannot work, before anything connects."""
    for what, option, url, problem in (
        ("store", "--database-url", settings.database_url, database_url_problem),
        ("broker", "--broker-url", settings.broker_url, broker_url_problem),
    ):
        found = problem(url)
        if found:
            raise click.UsageError(f"{what} URL {mask_url(url)} ({option}): {found}")


def load_json(text: str, what: str) -> Any:
    """`text` as JSON, refused with the reason when it is not JSON or nests too deeply."""
    try:
        value = json.loads(text)
    except RecursionError:
        # The decoder recurses per level; input_problem below says the same of shallower input.
        raise BadInput(f"{what} refused: nested more than {MAX_INPUT_DEPTH} levels deep") from None
    except ValueError as exc:
        raise BadInput(f"{what} is not valid JSON: {exc}") from None
    problem = input_problem(value)
    if problem is not None:
        raise BadInput(f"{what} refused: {problem}")
    return value


def read_text_file(file: IO[bytes], option: str, limit: int) -> str:
    """A file's contents as UTF-8 text, at most `limit` bytes (so /dev/zero cannot hang us)."""
    name = getattr(file, "name", "-")
    try:
        raw = file.read(limit + 1)
    except OSError as exc:
        raise click.BadParameter(
            f"{name!r}: {exc.strerror or exc}", param_hint=f"'{option}'"
        ) from None
    if len(raw) > limit:
        raise click.BadParameter(f"{name!r} is over {limit} bytes", param_hint=f"'{option}'")
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise click.BadParameter(
            f"{name!r} is not UTF-8 text (byte {exc.start}: {exc.reason})", param_hint=f"'{option}'"
        ) from None


class ErrorHandlingGroup(click.Group):
    """The root group: every failure, expected or not, ends as one line and an exit code."""

    _chosen: click.Command | None = None
    _context: click.Context | None = None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        self._chosen = command  # known before its own options are parsed: --json applies
        return name, command, rest

    def invoke(self, ctx: click.Context) -> Any:
        self._context = ctx
        return super().invoke(ctx)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        scrub_warnings(argv)
        try:
            result = super().main(argv, prog_name, complete_var, False, **extra)
        except SystemExit:
            raise
        except BaseException as exc:  # the last resort: one line, no traceback
            obj = self._context.obj if self._context is not None else None
            settings = obj if isinstance(obj, Settings) else None
            code = report(exc, as_json=self._wants_json(argv), settings=settings, argv=argv)
            if isinstance(exc, KeyboardInterrupt):
                # CPython flags an interrupt that passed through code run by exec() (dataclass
                # and namedtuple methods are made so) and at exit kills itself with SIGINT even
                # though it was handled; the next exec clears the flag, so 130 is the exit code.
                exec("pass")
            sys.exit(code)
        sys.exit(result if isinstance(result, int) else 0)

    def _wants_json(self, argv: Sequence[str]) -> bool:
        command = self._chosen
        if command is None or "--json" not in argv:
            return False
        while isinstance(command, click.Group):  # `quarantine list --json`: the subcommand's
            names = [arg for arg in argv if arg in command.commands]
            if not names:
                return False
            command = command.commands[names[0]]
        return any(param.name == "as_json" for param in command.params)
