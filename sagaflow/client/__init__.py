"""What a producer loads: SagaClient, and the start outbox it falls back on."""

from sagaflow.client.saga_client import (
    BrokerUnavailable,
    Durability,
    InvalidOperation,
    SagaClient,
    StartReceipt,
)

__all__ = ["BrokerUnavailable", "Durability", "InvalidOperation", "SagaClient", "StartReceipt"]
