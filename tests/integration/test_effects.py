"""EffectLog: a step's change happens once per idempotency key, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery.contrib.testing.worker import start_worker
from sqlalchemy.engine import Connection, Engine

from sagaflow import EffectLog, create_service_app, effect_log_table
from sagaflow.config import Settings
from tests.conftest import (
    REDIS_URL,
    create_postgres_database,
    drop_postgres_database,
    poll,
    require_redis,
)

metadata = sa.MetaData()
log_table = effect_log_table(metadata, "test_effects")
counters = sa.Table(
    "test_counters",
    metadata,
    sa.Column("name", sa.String(50), primary_key=True),
    sa.Column("value", sa.Integer, nullable=False),
)


def service_database(kind: str, tmp_path: Path) -> Iterator[Engine]:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'service.db'}"
        created = sa.create_engine(url, connect_args={"timeout": 30})
    else:
        url = create_postgres_database("sagaflow_effects")
        created = sa.create_engine(url)
    metadata.create_all(created)
    with created.begin() as conn:
        conn.execute(counters.insert().values(name="charges", value=0))
    try:
        yield created
    finally:
        created.dispose()
        if kind == "postgresql":
            drop_postgres_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    yield from service_database(request.param, tmp_path)


@pytest.fixture
def pg_engine(tmp_path: Path) -> Iterator[Engine]:
    """PostgreSQL only: SQLite serialises writers, so concurrent deliveries cannot overlap."""
    yield from service_database("postgresql", tmp_path)


def context(step: str = "charge") -> dict[str, Any]:
    saga_id = str(uuid.uuid4())
    return {"saga_id": saga_id, "step": step, "idempotency_key": f"{saga_id}:{step}"}


def charges(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(counters.c.value)).scalar_one())


def add_charge(conn: Connection) -> dict[str, Any]:
    conn.execute(counters.update().values(value=counters.c.value + 1))
    return {"charged": 100, "token": uuid.uuid4().hex}


def test_a_second_delivery_returns_the_first_result_without_running_again(
    engine: Engine,
) -> None:
    log = EffectLog(engine, log_table)
    ctx = context()
    first = log.apply_once(ctx, add_charge)
    again = log.apply_once(ctx, add_charge)
    assert again == first  # the same token: the change did not run twice
    assert charges(engine) == 1
    recorded = log.recorded(ctx["idempotency_key"])
    assert recorded is not None
    assert recorded["saga_id"] == ctx["saga_id"] and recorded["step"] == "charge"
    assert recorded["result"] == first

    other = log.apply_once(context(), add_charge)  # another key is another effect
    assert other != first and charges(engine) == 2


def test_a_failed_change_leaves_no_trace_and_runs_again(engine: Engine) -> None:
    log = EffectLog(engine, log_table)
    ctx = context()

    def broken(conn: Connection) -> None:
        add_charge(conn)
        raise RuntimeError("card declined")

    with pytest.raises(RuntimeError, match="card declined"):
        log.apply_once(ctx, broken)
    assert charges(engine) == 0  # rolled back with the key
    assert log.recorded(ctx["idempotency_key"]) is None
    log.apply_once(ctx, add_charge)
    assert charges(engine) == 1


def test_a_constraint_the_change_breaks_is_its_own_failure(engine: Engine) -> None:
    log = EffectLog(engine, log_table)

    def duplicate_counter(conn: Connection) -> None:
        conn.execute(counters.insert().values(name="charges", value=5))

    with pytest.raises(sa.exc.IntegrityError):
        log.apply_once(context(), duplicate_counter)


def test_concurrent_deliveries_of_one_step_apply_it_once(pg_engine: Engine) -> None:
    engine = pg_engine
    log = EffectLog(engine, log_table)
    ctx = context()
    inside, release = threading.Event(), threading.Event()
    ran = []

    def slow_charge(conn: Connection) -> dict[str, Any]:
        ran.append(1)
        inside.set()
        assert release.wait(30), "the test never released the first delivery"
        return add_charge(conn)

    def waiting_on_a_lock() -> bool:
        with engine.connect() as conn:
            return bool(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                ).scalar_one()
            )

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(log.apply_once, ctx, slow_charge)
        assert inside.wait(30)
        second = pool.submit(log.apply_once, ctx, slow_charge)
        poll(waiting_on_a_lock, 30, lambda: "the second delivery never waited on the key")
        release.set()
        assert second.result(30) == first.result(30)
    assert ran == [1] and charges(engine) == 1


def test_the_decorator_on_a_real_task_redelivered(pg_engine: Engine) -> None:
    """`@log.once` under `@app.task`: Celery sees a one-argument task and each delivery of the
    same step applies the change once."""
    engine = pg_engine
    require_redis()
    broker = REDIS_URL.rsplit("/", 1)[0] + "/8"
    settings = Settings(broker_url=broker, result_backend=broker, queue="effects-test")
    app = create_service_app("effects-test", settings=settings)
    log = EffectLog(engine, log_table)

    @app.task(name="effects_test.charge")
    @log.once
    def charge(ctx: dict[str, Any], conn: Connection) -> dict[str, Any]:
        return add_charge(conn)

    import redis

    redis.Redis.from_url(broker).flushdb()
    ctx = context()
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
        results = [charge.apply_async((ctx,)).get(timeout=30) for _ in range(3)]
    assert results[0] == results[1] == results[2]
    assert charges(engine) == 1
    assert charge.__name__ == "charge"
