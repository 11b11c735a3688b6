"""The quarantine's rows in the saga store: add, list, show, count, drop. Knows nothing of Celery.

The quarantine is bounded: past `max_records` messages a new one is logged and dropped (a flood
of garbage must not fill the database), and the refusal is counted for /metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa

from sagaflow.core.quarantine import QuarantinedMessage, QuarantineReason
from sagaflow.store.protocol import SagaStore, utcnow
from sagaflow.store.rows import aware
from sagaflow.store.schema import quarantine

logger = logging.getLogger("sagaflow.quarantine")

MAX_QUARANTINED = 10_000


class QuarantineStore:
    """Quarantined messages kept in one saga store's database."""

    def __init__(self, store: SagaStore, max_records: int = MAX_QUARANTINED) -> None:
        self.store = store
        self.max_records = max_records
        self.overflowed = 0  # records refused in this process because the quarantine was full

    def add(self, record: QuarantinedMessage) -> bool:
        """Keep `record`. False if it was there already (a redelivery) or the quarantine is full."""
        with self.store.connect() as conn, conn.begin():
            if conn.execute(sa.select(quarantine.c.id).where(quarantine.c.id == record.id)).first():
                return False
            held = conn.execute(sa.select(sa.func.count()).select_from(quarantine)).scalar_one()
            if held >= self.max_records:
                self.overflowed += 1
                logger.warning(
                    "quarantine full (%d messages): message %s (%s: %s) dropped; "
                    "drop or replay some with `sagaflow quarantine`",
                    held,
                    record.task_id,
                    record.reason.value,
                    record.detail,
                )
                return False
            try:
                with conn.begin_nested():
                    conn.execute(quarantine.insert().values(**_row(record)))
            except sa.exc.IntegrityError:
                return False  # the same record, inserted by another process just now
        return True

    def newest(
        self, limit: int = 100, offset: int = 0, reason: QuarantineReason | None = None
    ) -> list[QuarantinedMessage]:
        """Newest first."""
        query = sa.select(quarantine).order_by(quarantine.c.received_at.desc(), quarantine.c.id)
        if reason is not None:
            query = query.where(quarantine.c.reason == reason.value)
        with self.store.connect() as conn:
            rows = conn.execute(query.limit(limit).offset(offset)).mappings().all()
        return [_record(row) for row in rows]

    def get(self, record_id: str) -> QuarantinedMessage | None:
        if not record_id.isalnum() or len(record_id) > 64:
            return None
        with self.store.connect() as conn:
            row = conn.execute(sa.select(quarantine).where(quarantine.c.id == record_id))
            found = row.mappings().first()
        return _record(found) if found is not None else None

    def find(self, prefix: str) -> list[QuarantinedMessage]:
        """Records whose id starts with `prefix` (ids are long; people type the first few)."""
        if not prefix.isalnum() or len(prefix) > 64:
            return []
        with self.store.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(quarantine).where(quarantine.c.id.startswith(prefix)).limit(2)
                )
                .mappings()
                .all()
            )
        return [_record(row) for row in rows]

    def count_by_reason(self) -> dict[str, int]:
        with self.store.connect() as conn:
            rows = conn.execute(
                sa.select(quarantine.c.reason, sa.func.count()).group_by(quarantine.c.reason)
            ).all()
        counts = {reason.value: 0 for reason in QuarantineReason}
        counts.update({str(reason): int(count) for reason, count in rows})
        return counts

    def drop(self, record_ids: Sequence[str]) -> int:
        """Forget these records; how many there were."""
        if not record_ids:
            return 0
        with self.store.connect() as conn, conn.begin():
            result = conn.execute(quarantine.delete().where(quarantine.c.id.in_(record_ids)))
        return int(result.rowcount or 0)

    def drop_all(self, reason: QuarantineReason | None = None) -> int:
        query = quarantine.delete()
        if reason is not None:
            query = query.where(quarantine.c.reason == reason.value)
        with self.store.connect() as conn, conn.begin():
            result = conn.execute(query)
        return int(result.rowcount or 0)


def _row(record: QuarantinedMessage) -> dict[str, object]:
    return {
        "id": record.id,
        "reason": record.reason.value,
        "detail": record.detail,
        "queue": record.queue,
        "task": record.task,
        "task_id": record.task_id,
        "saga_id": record.saga_id,
        "hostname": record.hostname,
        "received_at": record.received_at,
        "recorded_at": utcnow(),
        "content_type": record.content_type,
        "content_encoding": record.content_encoding,
        "headers": record.headers,
        "properties": record.properties,
        "body": record.body,
        "body_size": record.body_size,
        "truncated": record.truncated,
        "note": record.note,
    }


def _record(row: sa.RowMapping) -> QuarantinedMessage:
    received: datetime = aware(row["received_at"]) or row["received_at"]
    return QuarantinedMessage(
        id=row["id"],
        reason=QuarantineReason(row["reason"]),
        detail=row["detail"],
        queue=row["queue"],
        task=row["task"],
        task_id=row["task_id"],
        saga_id=row["saga_id"],
        hostname=row["hostname"],
        received_at=received,
        content_type=row["content_type"],
        content_encoding=row["content_encoding"],
        headers=row["headers"] or {},
        properties=row["properties"] or {},
        body=bytes(row["body"]),
        body_size=int(row["body_size"]),
        truncated=bool(row["truncated"]),
        note=row["note"],
    )
