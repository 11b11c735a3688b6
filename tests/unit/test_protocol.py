"""What travels between services and the orchestrator is cleaned into strict JSON."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from decimal import Decimal
from uuid import UUID

from sagaflow.core.machine import ErrorInfo
from sagaflow.core.protocol import error_payload, strict_json
from sagaflow.errors import NonRetryable


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


class PaymentDeclined(NonRetryable):
    """A step's error carrying data for programs."""


def test_error_payload_names_the_class_precisely_and_carries_its_details() -> None:
    try:
        raise PaymentDeclined("card declined", details={"code": "51", "at": Decimal("1.5")})
    except PaymentDeclined as exc:
        payload = error_payload(exc)
    assert payload["type"] == "PaymentDeclined"
    assert payload["qualified_type"] == "tests.unit.test_protocol.PaymentDeclined"
    assert payload["details"] == {"code": "51", "at": "1.5"}  # strict JSON
    info = ErrorInfo.from_json(payload)
    assert (info.qualified_type, info.details) == (payload["qualified_type"], payload["details"])
    assert ErrorInfo.from_json(info.to_json()) == info
    assert "details" not in error_payload(ValueError("no details"))


def test_oversized_details_are_cut_to_a_note() -> None:
    payload = error_payload(PaymentDeclined("x", details={"blob": "y" * 20_000}))
    assert payload["details"].startswith("<omitted: ")


def test_an_error_without_the_new_fields_reads_and_writes_as_before() -> None:
    old = {"type": "Flaky", "message": "flaky", "traceback": "Traceback...", "task_id": "t-1"}
    info = ErrorInfo.from_json(old)
    assert (info.qualified_type, info.details) == (None, None)
    assert info.to_json() == old
    assert json.dumps(info.to_json()) == json.dumps(old)
    assert ErrorInfo.from_json({"message": "m"}).type == "Unknown"
