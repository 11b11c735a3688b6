"""AsyncSagaClient against the running stack, through the README's FastAPI producer (read from
README.md, so the example there is the one that works) and httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from sagaflow import (
    AsyncSagaClient,
    ConfigurationError,
    Durability,
    InvalidOperation,
    SagaRecord,
    SagaState,
    SagaTimeout,
    Settings,
    StoreUnavailable,
)
from sagaflow.store.factory import open_store
from tests.conftest import ROOT, Stack, free_port

TRIP_STEPS = {"a1": "completed", "b2": "completed", "a3": "completed", "b4": "completed"}


def fastapi_example() -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- fastapi-example -->\n```python\n(.*?)```", readme, re.DOTALL)
    assert found, "README.md has no FastAPI example after <!-- fastapi-example -->"
    return found.group(1)


@pytest.fixture
def producer(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The README's producer module, its client pointed at the stack by SAGAFLOW_* variables."""
    for name, value in stack.settings.to_env().items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "producer.py"
    path.write_text(fastapi_example())
    spec = importlib.util.spec_from_file_location(f"producer_{uuid.uuid4().hex}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    if not module.sagas._closed:
        asyncio.run(module.sagas.aclose())


def http(module: ModuleType) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=module.api), base_url="http://t")


def test_the_readme_producer_starts_sagas_and_answers_once_they_finish(
    producer: ModuleType,
) -> None:
    async def main() -> list[httpx.Response]:
        async with http(producer) as web:
            started = await asyncio.gather(
                *(web.post("/sagas/trip", json={"order": n}) for n in range(20))
            )
            assert [r.status_code for r in started] == [202] * 20, started[0].text
            ids = [r.json()["saga_id"] for r in started]
            return await asyncio.gather(*(web.get(f"/sagas/{i}?wait=60") for i in ids))

    answers = asyncio.run(main())
    bodies = [a.json() for a in answers]
    assert [b["state"] for b in bodies] == ["completed"] * 20, bodies
    assert all(b["steps"] == TRIP_STEPS for b in bodies), bodies


def test_waiters_share_one_query_a_round(stack: Stack) -> None:
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "sagas.version" in statement and " IN " in statement.upper():
            statements.append((statement, parameters))

    async def main() -> list[BaseException | SagaRecord]:
        async with AsyncSagaClient(stack.settings) as client:
            await client.list_sagas(limit=1)  # the store is made
            sa.event.listen(client.client.store.engine, "before_cursor_execute", seen)
            ids = [str(uuid.uuid4()) for _ in range(20)]  # never recorded: every waiter waits
            waits = (client.wait(i, timeout=0.5) for i in ids)
            outcome = await asyncio.gather(*waits, return_exceptions=True)
            assert client._watcher is not None and client._watcher.waiters == {}
            return outcome

    outcome = asyncio.run(main())
    assert all(isinstance(o, SagaTimeout) for o in outcome), outcome
    assert statements, "the watcher never read the store"
    # One query asked about all 20 waiters at once (later ones, fewer, as waits timed out), and
    # there were fewer rounds than one per waiter each.
    sizes = [len(p) for _, p in statements]
    assert sizes[0] == 20 and max(sizes) == 20, sizes
    assert len(statements) < 20 * 0.5 / 0.01, len(statements)


def test_a_wait_for_a_finished_saga_answers_and_close_ends_pending_waits(stack: Stack) -> None:
    async def main() -> tuple[SagaRecord, BaseException | None, float]:
        client = AsyncSagaClient(stack.settings)
        saga_id = await client.start("trip", {"order": 1})
        finished = await client.wait(saga_id, timeout=60)
        again = await client.wait(saga_id, timeout=60)  # terminal already
        assert again.version == finished.version
        pending = asyncio.get_running_loop().create_task(
            client.wait(str(uuid.uuid4()), timeout=120)
        )
        await asyncio.sleep(0.05)  # the wait is registered
        began = time.monotonic()
        await client.aclose()
        problem = None
        try:
            await pending
        except BaseException as exc:
            problem = exc
        return finished, problem, time.monotonic() - began

    finished, problem, took = asyncio.run(main())
    assert finished.state is SagaState.COMPLETED
    assert isinstance(problem, ConfigurationError) and "closed" in str(problem), problem
    assert took < 60, f"a pending wait held aclose for {took:.1f}s"


def test_a_store_that_does_not_answer_fails_the_wait_not_times_it_out(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        broker_url="filesystem://",
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing",
    )

    async def main() -> tuple[BaseException | None, float]:
        async with AsyncSagaClient(settings) as client:
            began = time.monotonic()
            try:
                await client.wait(str(uuid.uuid4()), timeout=120)
            except BaseException as exc:
                return exc, time.monotonic() - began
            return None, time.monotonic() - began

    problem, took = asyncio.run(main())
    assert isinstance(problem, StoreUnavailable), problem
    assert took < 60, f"the wait took {took:.1f}s to say the store is away"


def test_bad_input_is_refused_and_an_unknown_saga_type_ends_rejected(
    producer: ModuleType,
) -> None:
    async def main() -> tuple[httpx.Response, httpx.Response, httpx.Response, httpx.Response]:
        async with http(producer) as web:
            not_an_object = await web.post("/sagas/trip", json=[1, 2])
            started = await web.post("/sagas/no_such_type", json={"x": 1})
            saga_id = started.json()["saga_id"]
            rejected = await web.get(f"/sagas/{saga_id}?wait=60")
            unknown = await web.get(f"/sagas/{uuid.uuid4()}")
            return not_an_object, started, rejected, unknown

    not_an_object, started, rejected, unknown = asyncio.run(main())
    assert not_an_object.status_code == 422
    assert "JSON object" in not_an_object.json()["detail"], not_an_object.text
    assert started.status_code == 202
    assert rejected.json()["state"] == "rejected", rejected.text
    assert "no_such_type" in rejected.json()["error"], rejected.text
    assert unknown.status_code == 404 and "no saga" in unknown.json()["detail"]


def test_wait_times_out_saying_where_the_saga_is(stack: Stack) -> None:
    async def main() -> tuple[str, str, str]:
        async with AsyncSagaClient(stack.settings) as client:
            saga_id = await client.start("orphan", {})
            await poll_async(
                lambda: client.status(saga_id),
                lambda saga: [s.status.value for s in saga.steps] == ["completed", "executing"],
                f"saga {saga_id} dispatching its step on a queue nobody reads",
                timeout=60,
            )
            with pytest.raises(SagaTimeout) as stuck:
                await client.wait(saga_id, timeout=0.3)
            with pytest.raises(SagaTimeout) as never:
                await client.wait(str(uuid.uuid4()), timeout=0.2)
            with pytest.raises(InvalidOperation) as refused:
                await client.retry(saga_id)
            return str(stuck.value), str(never.value), str(refused.value)

    stuck, never, refused = asyncio.run(main())
    assert "step 'lost' is executing (queue 'nobody')" in stuck, stuck
    assert "not recorded yet" in never
    assert "cannot retry" in refused


def test_retry_and_a_wait_for_the_version_after_it(stack: Stack) -> None:
    async def main() -> tuple[SagaState, SagaState, int, int, list[str]]:
        async with AsyncSagaClient(stack.settings) as client:
            data = {"fail_at": ["a3"], "fail_first_compensation_at": ["b2"]}
            saga_id = await client.start("trip", data)
            stopped = await client.wait(saga_id, timeout=60)
            before = await client.retry(saga_id)
            # Terminal already, but not newer than `before`: the wait is for the retry's end.
            resumed = await client.wait(saga_id, timeout=60, newer_than=before)
            history = [h.event for h in await client.history(saga_id)]
            return stopped.state, resumed.state, before, resumed.version, history

    stopped, resumed, before, after, history = asyncio.run(main())
    assert stopped is SagaState.COMPENSATION_FAILED
    assert resumed is SagaState.FAILED and after > before
    assert "compensation_retried" in history, history


async def poll_async(read: Any, done: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"still pending after {timeout:g}s: {what} (last: {value!r:.300})")
        await asyncio.sleep(0.02)


def test_a_start_with_the_broker_down_keeps_the_saga_and_never_stalls_the_loop(
    tmp_path: Path,
) -> None:
    settings = Settings(
        home=tmp_path,
        broker_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        database_url=f"sqlite:///{tmp_path / 'sagaflow.db'}",
    )
    open_store(settings.database_url).upgrade()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def main() -> tuple[Any, float, int]:
        async with AsyncSagaClient(settings) as client:
            beat = asyncio.get_running_loop().create_task(ticker())
            began = time.monotonic()
            receipt = await client.submit("trip", {"order": 1})
            took = time.monotonic() - began
            beat.cancel()
            saga = await client.status(receipt.saga_id)
            assert saga.state is SagaState.REQUESTED  # the recovery sweep starts it later
            return receipt, took, ticks

    receipt, took, ticked = asyncio.run(main())
    assert receipt.durability is Durability.STORE
    assert took > 0.3, f"the start returned in {took:.3f}s: was the broker really retried?"
    # A start that blocked the loop would let the ticker run once at most in that time.
    assert ticked >= 3, f"the loop ticked {ticked} times in {took:.2f}s"


def test_a_closed_client_and_bad_settings_are_refused(stack: Stack) -> None:
    with pytest.raises(ConfigurationError, match="threads"):
        AsyncSagaClient(stack.settings, threads=0)
    with pytest.raises(ConfigurationError, match="not both"):
        AsyncSagaClient(client=stack.client, durability="store")

    async def main() -> None:
        client = AsyncSagaClient(stack.settings)
        await client.aclose()
        with pytest.raises(ConfigurationError, match="closed"):
            await client.start("trip", {})

    asyncio.run(main())
