"""Quarantine records of the messages sagaflow's own tasks run: rebuilt with kombu's JSON, as
the message was written, so that replaying the record delivers the same call."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from kombu.utils import json as kombu_json

from sagaflow.core.quarantine import (
    MAX_DETAIL_CHARS,
    QuarantinedMessage,
    QuarantineReason,
    clean_headers,
    record_id_for,
)


def task_message_record(request: Any, args: Any, kwargs: Any, why: Any) -> QuarantinedMessage:
    """A record of the message a task is running (its Celery request), rebuilt as Celery's
    protocol 2 would carry it, so that a replay delivers the same call."""
    embed = {
        "callbacks": getattr(request, "callbacks", None),
        "errbacks": getattr(request, "errbacks", None),
        "chain": getattr(request, "chain", None),
        "chord": getattr(request, "chord", None),
    }
    # kombu's JSON, as the message was written with: it round-trips what kombu decoded
    # (datetimes, decimals), and NULs or lone surrogates stay escaped, byte for byte replayable.
    body = kombu_json.dumps([list(args), dict(kwargs), embed]).encode()  # type: ignore[no-untyped-call]
    headers = clean_headers(
        {
            "lang": "py",
            "task": getattr(request, "task", None),
            "id": getattr(request, "id", None),
            "root_id": getattr(request, "root_id", None),
            "parent_id": getattr(request, "parent_id", None),
            "retries": getattr(request, "retries", 0) or 0,
        }
    )
    delivery = getattr(request, "delivery_info", None) or {}
    queue = delivery.get("routing_key") if isinstance(delivery, Mapping) else None
    return QuarantinedMessage(
        id=record_id_for(queue, headers, body),
        reason=QuarantineReason.BAD_ARGUMENTS,
        detail=str(getattr(why, "reason", why))[:MAX_DETAIL_CHARS],
        queue=queue,
        task=headers.get("task"),
        task_id=headers.get("id"),
        saga_id=getattr(why, "saga_id", None),
        hostname=getattr(request, "hostname", None),
        received_at=datetime.now(timezone.utc),
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        body=body,
        body_size=len(body),
    )
