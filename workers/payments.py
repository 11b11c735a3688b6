"""Payments service: `celery -A workers.payments worker -Q payments`."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sagaflow import create_service_app

from . import db

app = create_service_app("payments")


class InsufficientFunds(Exception):
    pass


@app.task(name="payments.charge")
def charge(context: dict[str, Any]) -> dict[str, Any]:
    order = context["data"]

    def change(conn: Connection) -> dict[str, Any]:
        charged = conn.execute(
            sa.update(db.accounts)
            .where(
                db.accounts.c.customer == order["customer"],
                db.accounts.c.balance >= order["amount"],
            )
            .values(balance=db.accounts.c.balance - order["amount"])
        )
        if charged.rowcount != 1:
            raise InsufficientFunds(
                f"customer {order['customer']!r} cannot pay {order['amount']} cents"
            )
        return {"customer": order["customer"], "charged": order["amount"]}

    return db.apply_once(context, "payments", "charge", change)


@app.task(name="payments.refund")
def refund(context: dict[str, Any]) -> dict[str, Any]:
    charged = context["result"]

    def change(conn: Connection) -> dict[str, Any]:
        conn.execute(
            sa.update(db.accounts)
            .where(db.accounts.c.customer == charged["customer"])
            .values(balance=db.accounts.c.balance + charged["charged"])
        )
        return {"customer": charged["customer"], "refunded": charged["charged"]}

    return db.apply_once(context, "payments", "refund", change)
