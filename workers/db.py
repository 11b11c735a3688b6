"""The example services' own database (not sagaflow's store): balances, stock, shipments.

Every service action and compensation runs in one transaction together with a row in
`service_effects` keyed by the step's idempotency key: a redelivered step finds its key already
there and does nothing, so each effect happens once, and the log shows the order they ran in.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sagaflow.service.effects import EffectLog, effect_log_table
from sagaflow.sqlite_engine import create_sqlite_engine
from sagaflow.urls import database_url_problem, mask_url, scrub

metadata = sa.MetaData()

accounts = sa.Table(
    "example_accounts",
    metadata,
    sa.Column("customer", sa.String(100), primary_key=True),
    sa.Column("balance", sa.Integer, nullable=False),
)
stock = sa.Table(
    "example_stock",
    metadata,
    sa.Column("sku", sa.String(100), primary_key=True),
    sa.Column("quantity", sa.Integer, nullable=False),
)
shipments = sa.Table(
    "example_shipments",
    metadata,
    sa.Column("order_id", sa.String(100), primary_key=True),
    sa.Column("country", sa.String(10), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
)
# sagaflow's effect log, with two columns of our own so the log reads as what happened.
effects = effect_log_table(
    metadata,
    "example_effects",
    sa.Column("service", sa.String(50), nullable=False),
    sa.Column("operation", sa.String(50), nullable=False),
)

_engines: dict[tuple[int, str], Engine] = {}
_lock = threading.Lock()


def database_url() -> str:
    """WORKERS_DATABASE_URL, else the saga store's database, else SQLite under SAGAFLOW_HOME."""
    url = os.environ.get("WORKERS_DATABASE_URL") or os.environ.get("SAGAFLOW_DATABASE_URL")
    if url:
        return url
    home = os.environ.get("SAGAFLOW_HOME", ".sagaflow")
    os.makedirs(home, exist_ok=True)
    return f"sqlite:///{os.path.join(home, 'services.db')}"


def engine(url: str | None = None) -> Engine:
    url = url or database_url()
    key = (os.getpid(), url)  # one engine per process: never share a pool across fork
    with _lock:
        if key not in _engines:
            if url.startswith("sqlite"):
                _engines[key] = create_sqlite_engine(url)
            else:
                _engines[key] = sa.create_engine(url, pool_pre_ping=True)
        return _engines[key]


def create_tables(url: str | None = None) -> None:
    metadata.create_all(engine(url))


def seed(
    balances: Mapping[str, int], quantities: Mapping[str, int], url: str | None = None
) -> None:
    """Reset the example data: balances and stock as given, no shipments, no effects. The
    tables are made again, so an older layout of them never gets in the way."""
    metadata.drop_all(engine(url))
    create_tables(url)
    with engine(url).begin() as conn:
        for table in (effects, shipments, accounts, stock):
            conn.execute(table.delete())
        conn.execute(
            accounts.insert(), [{"customer": c, "balance": b} for c, b in balances.items()]
        )
        conn.execute(stock.insert(), [{"sku": s, "quantity": q} for s, q in quantities.items()])


def apply_once(
    context: Mapping[str, Any],
    service: str,
    operation: str,
    change: Callable[[Connection], dict[str, Any] | None],
) -> dict[str, Any]:
    """Run `change` and record the effect in one transaction, once per idempotency key."""
    log = EffectLog(engine, effects)
    result = log.apply_once(
        context, lambda conn: change(conn) or {}, service=service, operation=operation
    )
    return result


def balances(url: str | None = None) -> dict[str, int]:
    with engine(url).connect() as conn:
        return {r.customer: r.balance for r in conn.execute(sa.select(accounts))}


def quantities(url: str | None = None) -> dict[str, int]:
    with engine(url).connect() as conn:
        return {r.sku: r.quantity for r in conn.execute(sa.select(stock))}


def effects_for(saga_id: str, url: str | None = None) -> list[tuple[str, str]]:
    """(service, operation) in the order they happened, for one saga."""
    with engine(url).connect() as conn:
        rows = conn.execute(
            sa.select(effects.c.service, effects.c.operation)
            .where(effects.c.saga_id == saga_id)
            .order_by(effects.c.id)
        )
        return [(r.service, r.operation) for r in rows]


def main() -> None:
    """`python -m workers.db`: create the example tables and give them some money and stock.

    Fails with one line on stderr (exit 2 for a URL that cannot work, 1 otherwise), the URL's
    password masked: the stack and compose's `migrate` show what it prints.
    """
    url = database_url()
    problem = database_url_problem(url)
    if problem is not None:
        print(f"error: database URL {mask_url(url)}: {problem}", file=sys.stderr)
        sys.exit(2)
    try:
        seed({"alice": 100_000, "bob": 1_500, "carol": 25_000}, {"widget": 1_000, "gadget": 3})
        print(f"example data in {mask_url(url)}: balances {balances()}, stock {quantities()}")
    except sa.exc.SQLAlchemyError as exc:
        reason = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        message = " ".join(str(reason).split())
        print(
            f"error: cannot prepare the example data in {mask_url(url)}: {scrub(message, [url])}",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
