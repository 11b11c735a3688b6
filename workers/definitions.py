"""The example sagas. Task names only: nothing here imports the services' code."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sagaflow import Saga, SagaOrchestrator, Step

REQUIRED = ("order_id", "customer", "sku", "quantity", "amount", "country")


def validate_order(data: Mapping[str, Any]) -> None:
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if not isinstance(data["quantity"], int) or data["quantity"] <= 0:
        raise ValueError("quantity must be a positive integer")
    if not isinstance(data["amount"], int) or data["amount"] < 0:
        raise ValueError("amount must be a non-negative integer (cents)")


order = Saga(
    "order",
    steps=[
        Step("reserve_stock", "inventory.reserve", "inventory.release", queue="inventory"),
        Step("charge_payment", "payments.charge", "payments.refund", queue="payments"),
        Step("schedule_shipping", "shipping.schedule", "shipping.cancel", queue="shipping"),
    ],
    validate=validate_order,
    keys=("order_id", "customer"),
)


class GiftOrder(SagaOrchestrator):
    """The subclassing form: a gift paid by voucher skips the payment step."""

    saga_type = "gift_order"
    keys = ("order_id", "customer")

    def validate_input(self, data: Mapping[str, Any]) -> None:
        validate_order(data)

    def define_steps(self, data: Mapping[str, Any]) -> list[Step]:
        steps = [Step("reserve_stock", "inventory.reserve", "inventory.release", queue="inventory")]
        if not data.get("voucher"):
            steps.append(
                Step("charge_payment", "payments.charge", "payments.refund", queue="payments")
            )
        steps.append(
            Step("schedule_shipping", "shipping.schedule", "shipping.cancel", queue="shipping")
        )
        return steps
