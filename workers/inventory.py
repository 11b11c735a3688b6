"""Inventory service: `celery -A workers.inventory worker -Q inventory`."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sagaflow import create_service_app

from . import db

app = create_service_app("inventory")


class OutOfStock(Exception):
    pass


@app.task(name="inventory.reserve")
def reserve(context: dict[str, Any]) -> dict[str, Any]:
    order = context["data"]

    def change(conn: Connection) -> dict[str, Any]:
        taken = conn.execute(
            sa.update(db.stock)
            .where(db.stock.c.sku == order["sku"], db.stock.c.quantity >= order["quantity"])
            .values(quantity=db.stock.c.quantity - order["quantity"])
        )
        if taken.rowcount != 1:
            raise OutOfStock(f"not enough {order['sku']!r} in stock for {order['quantity']}")
        return {"sku": order["sku"], "reserved": order["quantity"]}

    return db.apply_once(context, "inventory", "reserve", change)


@app.task(name="inventory.release")
def release(context: dict[str, Any]) -> dict[str, Any]:
    reserved = context["result"]

    def change(conn: Connection) -> dict[str, Any]:
        conn.execute(
            sa.update(db.stock)
            .where(db.stock.c.sku == reserved["sku"])
            .values(quantity=db.stock.c.quantity + reserved["reserved"])
        )
        return {"sku": reserved["sku"], "released": reserved["reserved"]}

    return db.apply_once(context, "inventory", "release", change)
