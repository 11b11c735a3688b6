"""Shipping service: `celery -A workers.shipping worker -Q shipping`."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sagaflow import create_service_app

from . import db

app = create_service_app("shipping")

SHIPS_TO = frozenset({"DE", "FR", "GB", "NL", "US"})


class ShippingUnavailable(Exception):
    pass


@app.task(name="shipping.schedule")
def schedule(context: dict[str, Any]) -> dict[str, Any]:
    order = context["data"]
    if order["country"] not in SHIPS_TO:
        raise ShippingUnavailable(f"we do not ship to {order['country']!r}")

    def change(conn: Connection) -> dict[str, Any]:
        conn.execute(
            sa.insert(db.shipments).values(
                order_id=order["order_id"], country=order["country"], status="scheduled"
            )
        )
        return {"order_id": order["order_id"], "status": "scheduled"}

    return db.apply_once(context, "shipping", "schedule", change)


@app.task(name="shipping.cancel")
def cancel(context: dict[str, Any]) -> dict[str, Any]:
    shipment = context["result"]

    def change(conn: Connection) -> dict[str, Any]:
        conn.execute(
            sa.update(db.shipments)
            .where(db.shipments.c.order_id == shipment["order_id"])
            .values(status="cancelled")
        )
        return {"order_id": shipment["order_id"], "status": "cancelled"}

    return db.apply_once(context, "shipping", "cancel", change)
