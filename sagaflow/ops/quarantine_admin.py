"""What an operator does with quarantined messages: read, drop, replay. Used by the CLI and the
dashboard; built on a SagaClient's store and broker connection."""

from __future__ import annotations

from collections.abc import Sequence

from sagaflow.client.saga_client import BrokerUnavailable, InvalidOperation, SagaClient
from sagaflow.core.quarantine import QuarantinedMessage, QuarantineReason
from sagaflow.errors import QuarantinedMessageNotFound, SagaflowError
from sagaflow.store.quarantine import QuarantineStore

# Marks a replayed message, so that if it is refused again it is a new record (the old one is
# dropped only once the replay was published).
REPLAYED_HEADER = "sagaflow_replayed_from"


class QuarantineAdmin:
    def __init__(self, client: SagaClient) -> None:
        self.client = client
        self.records = QuarantineStore(client.store)

    def newest(
        self, limit: int = 100, offset: int = 0, reason: QuarantineReason | None = None
    ) -> list[QuarantinedMessage]:
        return self.records.newest(limit, offset, reason)

    def counts(self) -> dict[str, int]:
        return self.records.count_by_reason()

    def get(self, record_id: str) -> QuarantinedMessage:
        """The record with this id, or the one record whose id starts with it."""
        record = self.records.get(record_id)
        if record is not None:
            return record
        found = self.records.find(record_id)
        if len(found) == 1:
            return found[0]
        if found:
            raise QuarantinedMessageNotFound(
                f"{record_id!r} is the start of several quarantined message ids: give more of it"
            )
        raise QuarantinedMessageNotFound(f"no quarantined message {record_id!r}")

    def drop(self, record_ids: Sequence[str]) -> list[str]:
        """Forget these messages for good; the ids dropped."""
        records = [self.get(record_id) for record_id in record_ids]
        self.records.drop([r.id for r in records])
        return [r.id for r in records]

    def drop_all(self, reason: QuarantineReason | None = None) -> int:
        return self.records.drop_all(reason)

    def replay(
        self, record_id: str, force: bool = False, queue: str | None = None
    ) -> tuple[QuarantinedMessage, str]:
        """Put the message back on its queue (or on `queue`: a misrouted message), byte for
        byte, then drop it from the quarantine; returns it and the queue it went to.

        For a message that was refused for something since fixed (a worker that lacked the
        task, a consumer too strict). One that is still wrong is quarantined again, as a new
        record."""
        record = self.get(record_id)
        queue = queue or record.queue
        if record.truncated:
            raise InvalidOperation(
                f"message {record.id} was over the size limit and only its first "
                f"{len(record.body)} of {record.body_size} bytes were kept: it cannot be replayed"
            )
        if not queue:
            raise InvalidOperation(
                f"message {record.id} has no known queue: replay it with --queue"
            )
        if record.note and not force:
            raise InvalidOperation(f"message {record.id}: {record.note} (replay with --force)")
        app = self.client.app
        try:
            with app.producer_or_acquire() as producer:
                producer.publish(
                    record.body,
                    exchange="",
                    routing_key=queue,
                    content_type=record.content_type,
                    content_encoding=record.content_encoding,
                    headers={**record.headers, REPLAYED_HEADER: record.id},
                    # Declared as Celery declares it: RabbitMQ refuses other arguments.
                    declare=[app.amqp.queues[queue]],
                    retry=True,
                    retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
                )
        except SagaflowError:
            raise
        except Exception as exc:  # kombu raises transport-specific errors
            raise BrokerUnavailable(f"could not replay message {record.id}: {exc}") from exc
        self.records.drop([record.id])
        return record, queue
