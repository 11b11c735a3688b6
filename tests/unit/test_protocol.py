"""What travels between services and the orchestrator is cleaned into strict JSON."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from decimal import Decimal
from uuid import UUID

from sagaflow.core.protocol import error_payload, strict_json


def test_strict_json_turns_every_odd_value_into_plain_json() -> None:
    value = {
        1: Decimal("1.10"),
        "when": datetime(2026, 1, 1, tzinfo=timezone.utc),
        "day": date(2026, 1, 2),
        "id": UUID(int=1),
        "raw": b"\x00\xff",
        "floats": [float("nan"), float("inf"), -float("inf"), 1.5],
        "nul": "x\x00y",
        "set": {3},
        "tuple": (1, 2),
        "other": object,
    }
    cleaned = strict_json(value)
    text = json.dumps(cleaned, allow_nan=False)  # would raise on NaN or a non-JSON type
    assert "\\u0000" not in text
    assert cleaned["1"] == "1.10"
    assert cleaned["when"] == "2026-01-01T00:00:00+00:00"
    assert cleaned["day"] == "2026-01-02"
    assert cleaned["id"] == "00000000-0000-0000-0000-000000000001"
    assert cleaned["raw"] == "AP8="
    assert cleaned["floats"] == [None, None, None, 1.5]
    assert cleaned["nul"] == "xy"
    assert cleaned["set"] == [3] and cleaned["tuple"] == [1, 2]
    assert cleaned["other"] == "<class 'object'>"


def test_strict_json_stops_at_absurd_nesting() -> None:
    deep: list[object] = []
    for _ in range(1000):
        deep = [deep]
    cleaned = strict_json(deep)
    json.dumps(cleaned)
    assert "nested too deeply" in json.dumps(cleaned)


def test_error_payload_carries_type_message_and_traceback() -> None:
    try:
        raise ValueError("bad value")
    except ValueError as exc:
        payload = error_payload(exc, task_id="t-1")
    assert payload["type"] == "ValueError"
    assert payload["message"] == "bad value"
    assert "raise ValueError" in payload["traceback"]
    assert payload["task_id"] == "t-1"
