"""Effectively-once step actions, for service authors, in the service's own database.

Celery delivers a step at least once: a worker killed after the work but before the
acknowledgement gets the message again, and so does a step re-driven by the recovery sweep.
`EffectLog.apply_once` makes the effect happen once anyway: it records the step's idempotency
key and runs the change in one transaction of the service's database. A second delivery finds
the key and returns what the first one returned, without running the change again.

What this guarantees, and what not: changes made through the given connection happen exactly
once per key. Anything else the action does (an HTTP call, an e-mail) is not covered: pass
`context["idempotency_key"]` to that system so it can deduplicate too.

The service's database, never the saga store: service workers do not touch sagaflow's tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from functools import update_wrapper
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

T = TypeVar("T")
EngineSource = Engine | Callable[[], Engine]


def effect_log_table(
    metadata: sa.MetaData, name: str = "sagaflow_effects", *extra: sa.Column[Any]
) -> sa.Table:
    """The table EffectLog writes to; `extra` columns are filled from apply_once's keywords."""
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("idempotency_key", sa.String(255), nullable=False, unique=True),
        sa.Column("saga_id", sa.String(64), nullable=False, index=True),
        sa.Column("step", sa.String(200), nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        *extra,
    )


class EffectLog:
    """Runs a step's change and records its idempotency key in one transaction, once per key.

    `engine` may be a function returning the engine, so that prefork children each build their
    own after the fork instead of sharing the parent's connections.
    """

    def __init__(self, engine: EngineSource, table: sa.Table | None = None) -> None:
        self._engine = engine
        self.table = table if table is not None else effect_log_table(sa.MetaData())

    @property
    def engine(self) -> Engine:
        return self._engine if isinstance(self._engine, Engine) else self._engine()

    def create_table(self) -> None:
        self.table.create(self.engine, checkfirst=True)

    def apply_once(
        self,
        context: Mapping[str, Any],
        change: Callable[[Connection], T],
        **values: Any,
    ) -> T:
        """Run `change(conn)` once per `context["idempotency_key"]`; return its result, or the
        result recorded by the delivery that ran it."""
        key = str(context["idempotency_key"])
        row = {
            "idempotency_key": key,
            "saga_id": str(context.get("saga_id", "")),
            "step": context.get("step"),
            "at": datetime.now(timezone.utc),
            **values,
        }
        try:
            with self.engine.begin() as conn:
                # Take the key first: a concurrent delivery of the same step blocks on it here
                # until this transaction ends, then finds the key (or, if this one rolled back,
                # takes it and runs the change itself).
                conn.execute(self.table.insert().values(**row))
                result = change(conn)
                conn.execute(
                    self.table.update()
                    .where(self.table.c.idempotency_key == key)
                    .values(result=result)
                )
                return result
        except sa.exc.IntegrityError:
            recorded = self.recorded(key)
            if recorded is None:
                raise  # the change itself broke a constraint: a real failure of the step
            stored: T = recorded["result"]
            return stored

    def recorded(self, key: str) -> dict[str, Any] | None:
        """The row recorded for `key`, or None if no delivery has applied it."""
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(self.table).where(self.table.c.idempotency_key == key)
            ).first()
        return dict(found._mapping) if found is not None else None

    def once(self, action: Callable[..., T]) -> Callable[..., T]:
        """Decorate `action(context, conn, ...)` into `action(context, ...)`, applied once per
        idempotency key. Put it under `@app.task`."""

        def wrapper(context: Mapping[str, Any], *args: Any, **kwargs: Any) -> T:
            return self.apply_once(context, lambda conn: action(context, conn, *args, **kwargs))

        # Name and docs of the action, but not __wrapped__: Celery reads the signature to check
        # the arguments a task is sent with, and the task takes no `conn`.
        update_wrapper(wrapper, action)
        del wrapper.__wrapped__  # type: ignore[attr-defined]
        return wrapper
