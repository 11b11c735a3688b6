"""The chaos run's audit: every saga against the example services' own effects and data."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from sagaflow import SagaRecord, SagaState, StepStatus
from sagaflow.devstack.demo import BALANCES, STOCK, DemoOrder

# Enough money and stock that only the orders meant to fail fail, whatever the order they run in.
SEED_BALANCES = {**BALANCES, "alice": 1_000_000_000, "carol": 1_000_000_000}
SEED_STOCK = {**STOCK, "widget": 100_000_000, "gizmo": 100_000_000}
# step name -> (service, action, compensation), as the example services record them
OPERATIONS = {
    "reserve_stock": ("inventory", "reserve", "release"),
    "charge_payment": ("payments", "charge", "refund"),
    "schedule_shipping": ("shipping", "schedule", "cancel"),
}
FAILS_AT = {
    "fails at stock": "reserve_stock",
    "fails at payment": "charge_payment",
    "fails at shipping": "schedule_shipping",
}


@dataclass
class ServiceState:
    effects: dict[str, list[tuple[str, str]]]  # saga id -> [(step, phase)] in the order applied
    stray_effects: list[str]
    balances: dict[str, int]
    stock: dict[str, int]
    shipments: dict[str, str]  # order id -> status


def read_services(url: str) -> ServiceState:
    from workers import db

    effects: dict[str, list[tuple[str, str]]] = {}
    stray: list[str] = []
    with db.engine(url).connect() as conn:
        rows = conn.execute(
            sa.select(db.effects.c.idempotency_key, db.effects.c.saga_id).order_by(db.effects.c.id)
        ).all()
        shipments = {r.order_id: r.status for r in conn.execute(sa.select(db.shipments))}
    for key, saga_id in rows:
        prefix = f"{saga_id}:"
        if not key.startswith(prefix):
            stray.append(key)
            continue
        step, _, phase = key[len(prefix) :].partition(":")
        effects.setdefault(saga_id, []).append((step, phase or "action"))
    return ServiceState(effects, stray, db.balances(url), db.quantities(url), shipments)


def expected_effects(saga: SagaRecord) -> list[tuple[str, str]] | str:
    """The effects a terminal saga's steps say took place, in order; or why they are wrong."""
    statuses = [s.status for s in saga.steps]
    names = [s.name for s in saga.steps]
    if saga.state is SagaState.COMPLETED:
        if any(s is not StepStatus.COMPLETED for s in statuses):
            return f"completed with steps {[s.value for s in statuses]}"
        return [(n, "action") for n in names]
    if saga.state is SagaState.FAILED:
        if statuses.count(StepStatus.FAILED) != 1:
            return f"failed with steps {[s.value for s in statuses]}"
        at = statuses.index(StepStatus.FAILED)
        if any(s is not StepStatus.COMPENSATED for s in statuses[:at]) or any(
            s is not StepStatus.SKIPPED for s in statuses[at + 1 :]
        ):
            return f"failed at {names[at]} with steps {[s.value for s in statuses]}"
        done = names[:at]
        return [(n, "action") for n in done] + [(n, "compensation") for n in reversed(done)]
    return f"ended {saga.state.value} (error: {saga.error})"


def audit(
    orders: Sequence[DemoOrder],
    records: Sequence[SagaRecord | None],
    ids: Sequence[str],
    services: ServiceState,
    given: Collection[str],
) -> tuple[list[str], list[str]]:
    """(violations, sagas not terminal with where they stand). `given`: the ids the producer's
    start returned, each a saga that must be in the store."""
    violations: list[str] = []
    not_terminal: list[str] = []
    balances, stock = dict(SEED_BALANCES), dict(SEED_STOCK)
    want_shipments: dict[str, str] = {}
    for order, saga_id, saga in zip(orders, ids, records, strict=True):
        applied = services.effects.get(saga_id, [])
        if saga is None:
            not_terminal.append(f"{saga_id}: never recorded (effects: {applied})")
            if saga_id in given:
                violations.append(f"{saga_id}: its start returned the id, but it was lost")
            if applied:
                violations.append(f"{saga_id}: not recorded but has effects {applied}")
            continue
        if not saga.state.is_terminal:
            where = ", ".join(
                f"{s.name}={s.status.value}/a{s.attempts}/c{s.compensation_attempts}"
                for s in saga.steps
            )
            not_terminal.append(f"{saga_id}: {saga.state.value} since {saga.updated_at} [{where}]")
            continue
        fails_at = FAILS_AT.get(order.expect)
        if fails_at is None and saga.state is not SagaState.COMPLETED:
            violations.append(
                f"{saga_id}: should complete, ended {saga.state.value} ({saga.error})"
            )
        elif fails_at is not None:
            failed = [s.name for s in saga.steps if s.status is StepStatus.FAILED]
            if saga.state is not SagaState.FAILED or failed != [fails_at]:
                violations.append(
                    f"{saga_id}: should fail at {fails_at}, ended {saga.state.value} "
                    f"with failed steps {failed} ({saga.error})"
                )
        want = expected_effects(saga)
        if isinstance(want, str):
            violations.append(f"{saga_id}: {want}")
            continue
        if applied != want:
            violations.append(f"{saga_id}: {saga.state.value}, effects {applied}, expected {want}")
        unknown = [step for step, _ in applied if step not in OPERATIONS]
        if unknown:
            violations.append(f"{saga_id}: effects of unknown steps {unknown}")
        # What the services' data should show, from the saga's outcome alone.
        data = saga.data
        if saga.state is SagaState.COMPLETED:
            stock[data["sku"]] -= data["quantity"]
            if any(s.name == "charge_payment" for s in saga.steps):
                balances[data["customer"]] -= data["amount"]
            want_shipments[data["order_id"]] = "scheduled"
    for key in services.stray_effects:
        violations.append(f"effect {key!r} belongs to no saga of this run")
    if not not_terminal:
        for name, value in sorted(services.balances.items()):
            if value != balances.get(name):
                violations.append(f"balance of {name}: {value}, predicted {balances.get(name)}")
        for name, value in sorted(services.stock.items()):
            if value != stock.get(name):
                violations.append(f"stock of {name}: {value}, predicted {stock.get(name)}")
        if services.shipments != want_shipments:
            extra = sorted(set(services.shipments.items()) - set(want_shipments.items()))
            missing = sorted(set(want_shipments.items()) - set(services.shipments.items()))
            violations.append(f"shipments differ: unexpected {extra[:10]}, missing {missing[:10]}")
    return violations, not_terminal
