"""Publishing saga outcome events (`OrderCompleted`, `OrderFailed`, ...) to other apps."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu.entity import Exchange

logger = logging.getLogger(__name__)


class KombuEventPublisher:
    """Publishes each event to a topic exchange.

    The routing key is `<saga_type>.<state>` (`order.completed`, `order.failed`,
    `order.compensation_failed`), so other apps bind with `order.*`, `*.failed` or `#`; the
    event's name (`OrderCompleted`) travels in the body as `event` and in a header.
    """

    def __init__(self, app: Celery, exchange: str) -> None:
        self.app = app
        self.exchange = Exchange(exchange, type="topic", durable=True)  # type: ignore[no-untyped-call]

    def publish(self, name: str, payload: dict[str, Any]) -> None:
        routing_key = f"{payload.get('saga_type')}.{payload.get('state')}"
        with self.app.producer_or_acquire() as producer:
            producer.publish(
                {"event": name, **payload},
                exchange=self.exchange,
                routing_key=routing_key,
                serializer="json",
                declare=[self.exchange],
                retry=True,
                headers={"sagaflow_event": name},
            )
