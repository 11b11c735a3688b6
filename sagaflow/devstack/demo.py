"""`sagaflow demo`: the order saga example, end to end, on the embedded store and broker.

Starts the orchestrator and the three example services as separate worker processes (kombu's
filesystem broker, a SQLite store), runs a batch of orders of which some fail on purpose at
each step, shows progress, prints what ran and what was compensated, checks that the services'
balances and stock equal what the completed orders alone explain, and stops every process.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from sagaflow.client.saga_client import SagaClient
from sagaflow.config import Settings, ensure_home
from sagaflow.core.definitions import SagaState
from sagaflow.core.machine import SagaRecord
from sagaflow.devstack.examples import EXAMPLE_PACKAGE, SERVICES
from sagaflow.devstack.processes import WorkerGroup, WorkerSpec
from sagaflow.devstack.stack import check_broker
from sagaflow.errors import ConfigurationError, StoreUnavailable
from sagaflow.store.factory import open_store
from sagaflow.store.protocol import SagaStore
from sagaflow.terminal import STEP_MARK, driver_message, state_text
from sagaflow.urls import mask_url

# The repository's workers/ folder, which the package ships under this name.
BALANCES = {"alice": 1_000_000, "bob": 1_500, "carol": 250_000}
STOCK = {"widget": 10_000, "gadget": 3, "gizmo": 5_000}


@dataclass(frozen=True)
class DemoOrder:
    saga_type: str
    data: dict[str, Any]
    expect: str  # what should happen, shown next to what did


def demo_orders(count: int) -> list[DemoOrder]:
    """A fixed mix: most orders complete; others fail at stock, payment or shipping."""
    orders = []
    for i in range(count):
        base: dict[str, Any] = {
            "order_id": f"order-{i + 1:04d}",
            "customer": "alice" if i % 2 == 0 else "carol",
            "sku": "widget" if i % 3 else "gizmo",
            "quantity": 1 + i % 3,
            "amount": 1_000 + 250 * (i % 5),
            "country": ("DE", "FR", "US", "GB", "NL")[i % 5],
        }
        kind = i % 8
        saga_type = "order"
        if kind == 3:
            base.update(sku="gadget", quantity=50)
            expect = "fails at stock"
        elif kind == 5:
            base.update(customer="bob", amount=90_000)
            expect = "fails at payment"
        elif kind == 6:
            base.update(country="AQ")
            expect = "fails at shipping"
        elif kind == 7:
            saga_type = "gift_order"
            base.update(voucher="GIFT-" + str(i))
            expect = "completes (voucher, no payment)"
        else:
            expect = "completes"
        orders.append(DemoOrder(saga_type, base, expect))
    return orders


def expected_balances(sagas: list[SagaRecord]) -> tuple[dict[str, int], dict[str, int]]:
    """Balances and stock explained by the completed sagas alone (failed ones leave no trace)."""
    balances, stock = dict(BALANCES), dict(STOCK)
    for saga in sagas:
        if saga.state is not SagaState.COMPLETED:
            continue
        stock[saga.data["sku"]] -= saga.data["quantity"]
        if any(step.name == "charge_payment" for step in saga.steps):
            balances[saga.data["customer"]] -= saga.data["amount"]
    return balances, stock


def _example(module: str) -> Any:
    """A module of the example business (the repository's workers/, installed as
    sagaflow.example); imported by name so that nothing else depends on it."""
    name = f"{EXAMPLE_PACKAGE}.{module}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"the demo needs the example services ({name}), which this installation of "
            f"sagaflow lacks: {exc}"
        ) from exc


def run_demo(
    count: int,
    home: Path | None,
    timeout: float,
    console: Console | None = None,
    *,
    broker_url: str | None = None,
    database_url: str | None = None,
) -> bool:
    """Run the demo; embedded unless a broker and/or database URL is given (Redis, PostgreSQL).

    With a database URL the example services keep their tables in that database too
    (`example_*` tables, reset by the demo) unless WORKERS_DATABASE_URL names another.
    """
    console = console or Console()
    started = time.monotonic()
    _example("definitions")
    root = Path.cwd()
    home = Path(home) if home else Path(tempfile.mkdtemp(prefix="sagaflow-demo-"))
    home = home.resolve()
    settings = Settings(
        home=home,
        broker_url=broker_url or "filesystem://",
        database_url=database_url or f"sqlite:///{home / 'sagaflow.db'}",
        definitions=(f"{EXAMPLE_PACKAGE}.definitions",),
    )
    ensure_home(settings)
    services_url = os.environ.get("WORKERS_DATABASE_URL") or (
        database_url or f"sqlite:///{home / 'services.db'}"
    )
    env = {
        **os.environ,
        **settings.to_env(),
        "WORKERS_DATABASE_URL": services_url,
    }
    console.print(f"[bold]sagaflow demo[/] in {home}")
    broker = "kombu filesystem transport" if settings.is_filesystem_broker else "Celery broker"
    console.print(
        f"store: {mask_url(settings.database_url)}  broker: {broker} "
        f"{mask_url(settings.broker_url)}",
        highlight=False,
    )

    store = open_store(settings.database_url)
    store.upgrade()
    _seed_services(services_url)

    group = WorkerGroup(env, home / "logs", cwd=root)
    client = SagaClient(settings, store=store)
    check_broker(client.app, settings.broker_url)  # at once, not after the workers' timeout
    try:
        _start_workers(group, client, settings.queue, home, console)
        sagas, ok = _run_orders(client, store, count, timeout, services_url, started, console)
        failed = next((s for s in sagas if s.state is SagaState.FAILED), sagas[0])
        where = "" if database_url else f"--home {home} "
        console.print(
            f"look closer: [bold]sagaflow {where}status {failed.saga_id}[/] (or history, list)",
            highlight=False,
        )
        return ok
    finally:
        with console.status("stopping workers…"):
            stopping = time.monotonic()
            group.stop()
        console.print(f"workers stopped in {time.monotonic() - stopping:.1f}s", style="dim")
        client.close()


def _seed_services(services_url: str) -> None:
    """The example services' own tables, with their balances and stock reset."""
    db = _example("db")
    try:
        db.seed(BALANCES, STOCK, url=services_url)
    except sa.exc.SQLAlchemyError as exc:
        raise StoreUnavailable(
            f"the example services' database {mask_url(services_url)} is unavailable: "
            f"{driver_message(exc)}"
        ) from exc


def _start_workers(
    group: WorkerGroup, client: SagaClient, queue: str, home: Path, console: Console
) -> None:
    with console.status("starting the orchestrator and 3 service workers…"):
        group.start(WorkerSpec("orchestrator", "sagaflow.worker", [queue]))
        for service in SERVICES:
            group.start(WorkerSpec(service, f"{EXAMPLE_PACKAGE}.{service}", [service]))
        group.wait_ready(client.app, timeout=60)
    console.print(
        f"workers up: orchestrator ({queue}), "
        + ", ".join(SERVICES)
        + f"  [dim]logs in {home / 'logs'}[/]"
    )


def _run_orders(
    client: SagaClient,
    store: SagaStore,
    count: int,
    timeout: float,
    services_url: str,
    started: float,
    console: Console,
) -> tuple[list[SagaRecord], bool]:
    """Start the demo's orders, wait for them, show what happened; True if the services'
    balances and stock are what the completed orders explain."""
    db = _example("db")
    orders = demo_orders(count)
    ids = [client.start(order.saga_type, order.data) for order in orders]
    sagas = _wait_with_progress(client, store, ids, timeout, console)
    console.print(_result_table(orders, sagas))
    ok = _report(sagas, db.balances(services_url), db.quantities(services_url), started, console)
    return sagas, ok


def _wait_with_progress(
    client: SagaClient, store: SagaStore, ids: list[str], timeout: float, console: Console
) -> list[SagaRecord]:
    deadline = time.monotonic() + timeout
    terminal = {s.value for s in SagaState if s.is_terminal}
    columns = (
        TextColumn("sagas"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[states]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("sagas", total=len(ids), states="")
        while True:
            counts = store.count_by_state(ids)
            done = sum(n for state, n in counts.items() if state in terminal)
            summary = "  ".join(f"{state} {n}" for state, n in sorted(counts.items()))
            progress.update(task, completed=done, states=summary)
            if done == len(ids):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(ids) - done} of {len(ids)} sagas not finished after {timeout:g}s "
                    f"({summary or 'none recorded'})"
                )
            time.sleep(0.1)
    return [store.get(saga_id) for saga_id in ids]


def _result_table(orders: list[DemoOrder], sagas: list[SagaRecord]) -> Table:
    table = Table(title="sagas: ✓ ran  ✗ failed  ↩ compensated  - skipped")
    step_names: list[str] = []
    for saga in sagas:
        step_names += [s.name for s in saga.steps if s.name not in step_names]
    table.add_column("saga id", no_wrap=True)
    table.add_column("order", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for name in step_names:
        table.add_column(name.replace("_", " "), justify="center")
    table.add_column("error", no_wrap=True, min_width=19)
    for order, saga in zip(orders, sagas, strict=True):
        marks: list[Text | str] = []
        for name in step_names:
            step = next((s for s in saga.steps if s.name == name), None)
            if step is None:
                marks.append(Text("n/a", style="dim"))
            else:
                mark, style = STEP_MARK[step.status]
                marks.append(Text(mark, style=style))
        table.add_row(
            saga.saga_id[:8],
            order.data["order_id"] + ("" if saga.saga_type == "order" else " (gift)"),
            state_text(saga.state),
            *marks,
            Text(saga.error.type, style="red") if saga.error else "",
        )
    return table


def _report(
    sagas: list[SagaRecord],
    balances: dict[str, int],
    stock: dict[str, int],
    started: float,
    console: Console,
) -> bool:
    want_balances, want_stock = expected_balances(sagas)
    table = Table(title="service state after the run")
    table.add_column("account / sku")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("explained by completed orders", justify="right")
    for name, before in {**BALANCES, **STOCK}.items():
        after = balances.get(name, stock.get(name))
        want = want_balances.get(name, want_stock.get(name))
        style = "green" if after == want else "bold red"
        table.add_row(name, str(before), Text(str(after), style=style), str(want))
    console.print(table)
    states: dict[str, int] = {}
    for saga in sagas:
        states[saga.state.value] = states.get(saga.state.value, 0) + 1
    consistent = balances == want_balances and stock == want_stock
    no_stuck = not any(
        s.state in (SagaState.COMPENSATION_FAILED, SagaState.REJECTED) for s in sagas
    )
    summary = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    console.print(f"{len(sagas)} sagas: {summary}; {time.monotonic() - started:.1f}s in all")
    if consistent and no_stuck:
        console.print(
            "[green]balances and stock equal what the completed orders explain:[/] "
            "every failed order was compensated"
        )
        return True
    console.print("[bold red]service state does not match the completed orders[/]")
    return False
