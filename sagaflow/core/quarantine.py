"""Quarantined messages: what a worker took off a queue because it could not be a valid task.

A record is built where the message was refused (any sagaflow worker's consumer, or an
orchestrator task that checked its arguments), travels to the orchestrator as JSON, and is kept
in the saga store until an operator drops or replays it (`sagaflow quarantine`). No I/O here,
and no kombu: a record of a task's own message is built in sagaflow.messaging.quarantine_records.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sagaflow.core.protocol import strict_json

# The task that records a quarantined message in the store, on the orchestrator's queue.
QUARANTINE_TASK = "sagaflow.quarantine"
# Bytes of an oversized message kept for the operator to read (it cannot be replayed).
OVERSIZE_KEPT_BYTES = 64 * 1024
MAX_DETAIL_CHARS = 2_000
MAX_HEADERS_BYTES = 64 * 1024


class QuarantineReason(str, enum.Enum):
    OVERSIZE = "oversize"  # over the size limit, refused before its body was decoded
    UNDECODABLE = "undecodable"  # not JSON (or not UTF-8, or a content type sagaflow refuses)
    NOT_A_TASK = "not_a_task"  # not a Celery task message: headers or body of the wrong shape
    UNKNOWN_TASK = "unknown_task"  # no task of that name on the worker that took it
    BAD_ARGUMENTS = "bad_arguments"  # a sagaflow task whose arguments it cannot take


@dataclass(frozen=True)
class QuarantinedMessage:
    """One refused message: where it was, why, and its bytes (to read, and to replay)."""

    id: str
    reason: QuarantineReason
    detail: str
    queue: str | None
    task: str | None
    task_id: str | None
    saga_id: str | None
    hostname: str | None
    received_at: datetime
    content_type: str | None
    content_encoding: str | None
    headers: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    body: bytes = b""
    body_size: int = 0
    # The body is cut (an oversized message): shown, never replayed.
    truncated: bool = False
    # Set when delivering it again would run a step outside its saga (its failure was reported).
    note: str | None = None

    @property
    def replayable(self) -> bool:
        return not self.truncated

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "reason": self.reason.value,
            "detail": self.detail,
            "queue": self.queue,
            "task": self.task,
            "task_id": self.task_id,
            "saga_id": self.saga_id,
            "hostname": self.hostname,
            "received_at": self.received_at.isoformat(),
            "content_type": self.content_type,
            "content_encoding": self.content_encoding,
            "headers": self.headers,
            "properties": self.properties,
            "body": base64.b64encode(self.body).decode(),
            "body_size": self.body_size,
            "truncated": self.truncated,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: object) -> QuarantinedMessage:
        """The record a worker sent; ValueError if it is not one (then it is itself refused)."""
        if not isinstance(data, Mapping):
            raise ValueError("a quarantine record must be an object")
        try:
            reason = QuarantineReason(data["reason"])
            received_at = datetime.fromisoformat(_text(data, "received_at", required=True) or "")
            body = base64.b64decode(_text(data, "body", required=True) or "", validate=True)
        except (KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"not a quarantine record: {exc}") from exc
        if received_at.tzinfo is None:
            received_at = received_at.replace(tzinfo=timezone.utc)
        record_id = _text(data, "id", required=True) or ""
        if not record_id.isalnum() or len(record_id) > 64:
            raise ValueError("a quarantine record's id must be up to 64 letters and digits")
        headers, properties = data.get("headers") or {}, data.get("properties") or {}
        size, truncated = data.get("body_size"), data.get("truncated")
        if not isinstance(headers, dict) or not isinstance(properties, dict):
            raise ValueError("a quarantine record's headers and properties must be objects")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("a quarantine record's body_size must be a count of bytes")
        if not isinstance(truncated, bool):
            raise ValueError("a quarantine record's truncated must be true or false")
        return cls(
            id=record_id,
            reason=reason,
            detail=_text(data, "detail") or "",
            queue=_text(data, "queue"),
            task=_text(data, "task"),
            task_id=_text(data, "task_id"),
            saga_id=_text(data, "saga_id"),
            hostname=_text(data, "hostname"),
            received_at=received_at,
            content_type=_text(data, "content_type"),
            content_encoding=_text(data, "content_encoding"),
            headers=strict_json(headers),
            properties=strict_json(properties),
            body=body,
            body_size=size,
            truncated=truncated,
            note=_text(data, "note"),
        )


def record_id_for(queue: str | None, headers: object, body: bytes) -> str:
    """The same message delivered twice (a redelivery after a lost ack) is one record."""
    digest = hashlib.sha256()
    digest.update((queue or "").encode())
    digest.update(json.dumps(strict_json(headers), sort_keys=True).encode())
    digest.update(body)
    return digest.hexdigest()[:32]


def clean_headers(headers: object) -> dict[str, Any]:
    """Headers as storable JSON, bounded: a hostile message can carry anything there."""
    if not isinstance(headers, Mapping):
        return {"<not an object>": strict_json(repr(headers)[:1000])}
    cleaned = strict_json(dict(headers))
    if len(json.dumps(cleaned, default=str)) > MAX_HEADERS_BYTES:
        return {"<omitted>": f"headers over {MAX_HEADERS_BYTES} bytes of JSON"}
    assert isinstance(cleaned, dict)
    return cleaned


def _text(data: Mapping[str, Any], key: str, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ValueError(f"a quarantine record's {key} must be text")
    if key == "body":
        return value
    cleaned: str = strict_json(value)
    return cleaned[: MAX_DETAIL_CHARS if key == "detail" else 1000]
