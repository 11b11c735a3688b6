"""What a producer loads: SagaClient (AsyncSagaClient for asyncio), and the start outbox
they fall back on."""

from sagaflow.client.async_client import AsyncSagaClient
from sagaflow.client.saga_client import (
    BrokerUnavailable,
    Durability,
    InvalidOperation,
    SagaClient,
    StartReceipt,
)

__all__ = [
    "AsyncSagaClient",
    "BrokerUnavailable",
    "Durability",
    "InvalidOperation",
    "SagaClient",
    "StartReceipt",
]
