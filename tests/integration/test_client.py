"""SagaClient: input checked before anything is sent, clear errors, and reads from the store."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from sagaflow import SagaState, StepStatus
from sagaflow.client.saga_client import BrokerUnavailable, SagaClient, validate_input
from sagaflow.config import Settings
from sagaflow.core.vocabulary import HistoryEvent
from sagaflow.errors import InvalidSagaInput, SagaNotFound, SagaTimeout, StoreNotMigrated
from tests.acceptance.test_cli import UNREACHABLE_PG
from tests.conftest import Stack

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture
def offline_client(tmp_path: Path) -> Iterator[SagaClient]:
    """A client whose broker is not there: anything it tried to send would fail loudly."""
    settings = Settings(
        home=tmp_path,
        broker_url=UNREACHABLE_REDIS,
        database_url=f"sqlite:///{tmp_path / 'sagaflow.db'}",
        max_input_bytes=10_000,
    )
    client = SagaClient(settings)
    yield client
    client.close()


def nested(levels: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for _ in range(levels):
        data = {"a": data}
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "must be a JSON object (a dict), got list"),
        ("text", "must be a JSON object (a dict), got str"),
        (None, "must be a JSON object (a dict), got NoneType"),
        ({"when": datetime(2024, 1, 1, tzinfo=timezone.utc)}, "not JSON-serialisable"),
        ({"x": float("nan")}, "not JSON-serialisable"),
        ({"x": [math.inf]}, "not JSON-serialisable"),
        ({"tags": {"a", "b"}}, "not JSON-serialisable"),
        ({"blob": b"bytes"}, "not JSON-serialisable"),
        ({"big": "x" * 10_000}, "over the limit of 10000"),
    ],
    ids=["list", "str", "none", "datetime", "nan", "inf", "set", "bytes", "too-large"],
)
def test_start_refuses_bad_input_before_sending(
    offline_client: SagaClient, data: Any, message: str
) -> None:
    # The broker is unreachable: reaching it would raise BrokerUnavailable instead.
    with pytest.raises(InvalidSagaInput) as caught:
        offline_client.start("trip", data)
    assert message in str(caught.value)


def test_datetime_input_names_the_offending_type(offline_client: SagaClient) -> None:
    with pytest.raises(InvalidSagaInput, match="datetime"):
        offline_client.start("trip", {"when": datetime.now(timezone.utc)})


def test_deeply_nested_input_is_refused_clearly(offline_client: SagaClient) -> None:
    with pytest.raises(InvalidSagaInput, match="nested more than 64 levels deep"):
        offline_client.start("trip", nested(100_000))


@pytest.mark.parametrize("saga_type", ["", None, 3])
def test_start_refuses_a_missing_saga_type(offline_client: SagaClient, saga_type: Any) -> None:
    with pytest.raises(InvalidSagaInput, match="saga type must be a non-empty string"):
        offline_client.start(saga_type, {})


def test_input_size_limit_is_measured_on_compact_json() -> None:
    # {"s":"..."} is 8 characters plus the string: 92 fit in 100, 93 do not.
    assert validate_input({"s": "x" * 92}, 100) == {"s": "x" * 92}
    with pytest.raises(
        InvalidSagaInput, match="saga input is 101 bytes of JSON, over the limit of 100"
    ):
        validate_input({"s": "x" * 93}, 100)


def test_validated_input_is_a_json_clean_copy() -> None:
    original = {"t": (1, 2), "n": {"k": [None, True, 1.5]}}
    clean = validate_input(original, 1000)
    assert clean == {"t": [1, 2], "n": {"k": [None, True, 1.5]}}
    assert clean["n"] is not original["n"]


@pytest.mark.timeout(30)
def test_unreachable_broker_raises_broker_unavailable_quickly(tmp_path: Path) -> None:
    # The store is down too: only the broker could carry the start.
    settings = Settings(home=tmp_path, broker_url=UNREACHABLE_REDIS, database_url=UNREACHABLE_PG)
    client = SagaClient(settings)
    began = time.monotonic()
    with pytest.raises(BrokerUnavailable) as caught:
        client.start("trip", {"x": 1}, saga_id="never-sent", durability="broker")
    client.close()
    assert time.monotonic() - began < 15
    assert "could not enqueue saga never-sent" in str(caught.value)
    assert caught.value.__cause__ is not None  # the transport's own error is kept as the cause


def test_a_store_without_tables_refuses_a_start_and_sends_nothing(
    offline_client: SagaClient,
) -> None:
    # Not an outage to ride out through the broker or the outbox: nothing could ever record it.
    for durability in ("broker", "outbox", "store"):
        with pytest.raises(StoreNotMigrated, match=r"not started.*sagaflow db upgrade"):
            offline_client.start("trip", {"x": 1}, durability=durability)
    assert offline_client.outbox.pending() == []


def test_wait_for_a_saga_never_recorded_times_out_saying_so(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        broker_url=UNREACHABLE_REDIS,
        database_url=f"sqlite:///{tmp_path / 'sagaflow.db'}",
    )
    client = SagaClient(settings)
    client.store.upgrade()
    try:
        began = time.monotonic()
        with pytest.raises(
            SagaTimeout, match=r"saga ghost not finished after 0\.3s: not recorded yet"
        ):
            client.wait("ghost", timeout=0.3, poll_interval=0.02)
        assert 0.3 <= time.monotonic() - began < 10
        with pytest.raises(SagaNotFound, match="ghost"):
            client.get("ghost")
        with pytest.raises(SagaNotFound, match="ghost"):
            client.history("ghost")
    finally:
        client.close()


# -- against a running stack ------------------------------------------------------------------


@pytest.fixture
def stack_client(stack: Stack) -> Iterator[SagaClient]:
    """A client of its own, built from the stack's settings alone."""
    client = SagaClient(stack.settings)
    yield client
    client.close()


def test_wait_returns_the_terminal_record(stack_client: SagaClient) -> None:
    saga_id = stack_client.start("trip", {"via": "client"})
    saga = stack_client.wait(saga_id, timeout=60)
    assert saga.saga_id == saga_id
    assert saga.state is SagaState.COMPLETED and saga.state.is_terminal
    assert saga.data == {"via": "client"}
    assert saga.finished_at is not None

    failed = stack_client.wait(stack_client.start("trip", {"fail_at": ["a3"]}), timeout=60)
    assert failed.state is SagaState.FAILED
    assert failed.error is not None and failed.error.type == "StepRefused"


def test_get_of_a_finished_saga_returns_its_steps(stack_client: SagaClient) -> None:
    saga_id = stack_client.start("trip", {}, saga_id=f"client-get-{time.time_ns()}")
    stack_client.wait(saga_id, timeout=60)
    saga = stack_client.get(saga_id)
    assert [s.name for s in saga.steps] == ["a1", "b2", "a3", "b4"]
    assert all(s.status is StepStatus.COMPLETED for s in saga.steps)
    assert saga.steps[0].result == {"step": "a1", "saw": []}
    rows = stack_client.history(saga_id)
    events = [h.event for h in rows]
    # Recorded by the client, then planned and started by the orchestrator.
    assert events[:3] == [
        HistoryEvent.SAGA_REQUESTED,
        HistoryEvent.SAGA_RECORDED,
        HistoryEvent.SAGA_STARTED,
    ]
    assert (rows[0].from_state, rows[0].to_state) == (None, "requested")
    assert (rows[1].from_state, rows[1].to_state) == ("requested", "started")
    assert events[-1] == HistoryEvent.SAGA_COMPLETED
    listed = stack_client.list_sagas(saga_type="trip", state="completed", limit=10_000)
    assert saga_id in [s.saga_id for s in listed]


def test_size_limit_counts_utf8_bytes_not_escapes() -> None:
    # 1000 euro signs are 3000 UTF-8 bytes, not 6000 characters of \u20ac escapes.
    assert validate_input({"s": "€" * 1000}, 3010) == {"s": "€" * 1000}
    with pytest.raises(InvalidSagaInput, match="3008 bytes of JSON"):
        validate_input({"s": "€" * 1000}, 3000)


def test_saga_id_over_the_limit_is_refused_before_sending(tmp_path: Path) -> None:
    client = SagaClient(
        Settings(
            home=tmp_path,
            broker_url="redis://127.0.0.1:1/0",
            database_url=f"sqlite:///{tmp_path / 's.db'}",
        )
    )
    with pytest.raises(InvalidSagaInput, match="at most 64 characters"):
        client.start("trip", {}, saga_id="y" * 65)
