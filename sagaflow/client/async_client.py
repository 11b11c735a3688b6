"""SagaClient for asyncio producers (FastAPI, aiohttp, ...): the same calls, awaitable.

The store (SQLAlchemy) and the broker (kombu) are blocking libraries, so each call runs the
blocking SagaClient in a thread of the client's own pool: the event loop never waits on a
database round trip, a broker reconnect or the outbox file, and a pool of bounded size keeps
100 concurrent starts from opening 100 connections. `wait` does not poll the store per waiter:
one watcher per client reads the state of every saga being waited for in one query a round,
and loads a saga only once it is finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sagaflow.client.saga_client import (
    Durability,
    SagaClient,
    StartReceipt,
    not_finished,
    wait_is_over,
)
from sagaflow.client.validation import check_saga_id
from sagaflow.config import Settings
from sagaflow.core.machine import SagaRecord
from sagaflow.core.vocabulary import SagaState
from sagaflow.errors import ConfigurationError
from sagaflow.store.protocol import HistoryRow

T = TypeVar("T")
logger = logging.getLogger(__name__)

# Threads share the GIL with the event loop: on 2 vCPUs, 4 stalled the loop 7-10 ms at most
# under 100 concurrent starts and 8 stalled it 17-29 ms (benchmarks/async_loop.py).
DEFAULT_THREADS = 4
# The watcher's pace: fast right after a waiter arrives (most sagas finish within a few
# rounds), then every 50 ms while nothing changes; one query a round however many wait.
FIRST_ROUND_SECONDS = 0.01
SLOWEST_ROUND_SECONDS = 0.05
VERSIONS_PER_QUERY = 500  # within every driver's limit on bound parameters


class AsyncSagaClient:
    """Start sagas and read them from asyncio code without blocking the event loop.

    Every method of SagaClient, as a coroutine: `start`, `submit`, `status`, `list_sagas`,
    `history`, `wait`, `cancel`, `retry`, `mark_compensated`, `resolve`, `drain_outbox`.
    Use one client per process (it holds the store's and the broker's connection pools) and
    `await client.aclose()` at shutdown, or `async with AsyncSagaClient() as client:`.

    `threads` bounds how many calls run at once; more wait their turn without blocking. A
    client serves one event loop at a time (the one that last called `wait`). Given a
    SagaClient (`client=`), it uses that one and leaves it open at `aclose`.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client: SagaClient | None = None,
        durability: Durability | str | None = None,
        threads: int = DEFAULT_THREADS,
    ) -> None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ConfigurationError(f"threads must be a whole number >= 1, not {threads!r}")
        if client is not None and (settings is not None or durability is not None):
            raise ConfigurationError(
                "give settings and durability, or a SagaClient that has them, not both"
            )
        self._owns_client = client is None
        self.client = client or SagaClient(settings, durability=durability or Durability.OUTBOX)
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="sagaflow-client")
        self._prepare_lock = threading.Lock()
        self._prepared = False
        self._watcher: _Watcher | None = None
        self._closed = False

    @property
    def settings(self) -> Settings:
        return self.client.settings

    async def __aenter__(self) -> AsyncSagaClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise ConfigurationError("this AsyncSagaClient is closed")
        loop = asyncio.get_running_loop()
        call = functools.partial(self._in_thread, function, *args, **kwargs)
        return await loop.run_in_executor(self._executor, call)

    def _in_thread(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # SagaClient makes its app and store on first use; made once here, not by two threads.
        if not self._prepared:
            with self._prepare_lock:
                if not self._prepared:
                    _ = self.client.app.amqp.producer_pool, self.client.store
                    self._prepared = True
        return function(*args, **kwargs)

    async def start(
        self,
        saga_type: str,
        data: Mapping[str, Any],
        *,
        saga_id: str | None = None,
        deadline: float | None = None,
        durability: Durability | str | None = None,
    ) -> str:
        """Start a saga and return its id (SagaClient.start)."""
        receipt = await self.submit(
            saga_type, data, saga_id=saga_id, deadline=deadline, durability=durability
        )
        return receipt.saga_id

    async def submit(
        self,
        saga_type: str,
        data: Mapping[str, Any],
        *,
        saga_id: str | None = None,
        deadline: float | None = None,
        durability: Durability | str | None = None,
    ) -> StartReceipt:
        """Start a saga; the receipt says where its start was kept (SagaClient.submit)."""
        return await self._call(
            self.client.submit,
            saga_type,
            data,
            saga_id=saga_id,
            deadline=deadline,
            durability=durability,
        )

    async def status(self, saga_id: str) -> SagaRecord:
        """The saga with its steps; SagaNotFound until it is recorded (SagaClient.get)."""
        return await self._call(self.client.get, saga_id)

    get = status

    async def list_sagas(self, **filters: Any) -> list[SagaRecord]:
        """Sagas newest first; filters: state, saga_type, since, id_prefix, limit, offset, and
        where: input fields as `{"order_id": "o-4711"}` or `["customer.id=c-1"]`."""
        return await self._call(self.client.list_sagas, **filters)

    async def history(self, saga_id: str) -> list[HistoryRow]:
        return await self._call(self.client.history, saga_id)

    async def cancel(self, saga_id: str, reason: str = "") -> int:
        return await self._call(self.client.cancel, saga_id, reason)

    async def retry(self, saga_id: str) -> int:
        return await self._call(self.client.retry, saga_id)

    async def mark_compensated(self, saga_id: str, step: str, reason: str) -> int:
        return await self._call(self.client.mark_compensated, saga_id, step, reason)

    async def resolve(
        self, saga_id: str, step: str, applied: bool, reason: str, result: Any = None
    ) -> int:
        return await self._call(self.client.resolve, saga_id, step, applied, reason, result)

    async def drain_outbox(self) -> Any:
        return await self._call(self.client.drain_outbox)

    async def wait(
        self, saga_id: str, timeout: float = 30.0, newer_than: int | None = None
    ) -> SagaRecord:
        """The saga once it is terminal (and, with `newer_than`, changed since that version,
        as returned by `retry` or `resolve`); SagaTimeout says where it was. Any number of
        waiters share one query a round."""
        check_saga_id(saga_id)
        if self._closed:
            raise ConfigurationError("this AsyncSagaClient is closed")
        loop = asyncio.get_running_loop()
        watcher = self._watcher
        if watcher is None or watcher.loop is not loop:
            watcher = self._watcher = _Watcher(self, loop)
        waiter = watcher.add(saga_id, newer_than)
        try:
            return await asyncio.wait_for(waiter.future, timeout)
        except asyncio.TimeoutError:
            last = await self._call(self._load, saga_id)
            if last is not None and waiter.satisfied_by(last.state, last.version):
                return last  # finished since the last round
            raise not_finished(saga_id, timeout, last) from None
        finally:
            watcher.remove(waiter)

    # Run in the pool's threads: the store is made (and the outbox looked at) off the loop.
    def _versions(self, saga_ids: list[str]) -> dict[str, tuple[SagaState, int]]:
        found: dict[str, tuple[SagaState, int]] = {}
        for start in range(0, len(saga_ids), VERSIONS_PER_QUERY):
            found.update(self.client.store.versions(saga_ids[start : start + VERSIONS_PER_QUERY]))
        return found

    def _load(self, saga_id: str) -> SagaRecord | None:
        return self.client.store.load(saga_id)

    async def aclose(self) -> None:
        """Refuse new calls, end pending waits with ConfigurationError, let calls under way
        finish, then release the store's connections (of a SagaClient this client made)."""
        if self._closed:
            return
        self._closed = True
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            await watcher.stop(ConfigurationError("this AsyncSagaClient was closed"))
        # Off the loop: waits for the calls under way, then closes what they used.
        await asyncio.get_running_loop().run_in_executor(None, self._shut_down)

    def _shut_down(self) -> None:
        self._executor.shutdown(wait=True)
        if self._owns_client:
            self.client.close()


@dataclass(eq=False)
class _Waiter:
    saga_id: str
    newer_than: int | None
    future: asyncio.Future[SagaRecord]

    def satisfied_by(self, state: SagaState, version: int) -> bool:
        return wait_is_over(state, version, self.newer_than)


@dataclass(eq=False)
class _Watcher:
    """The one loop that reads the store for every waiter of a client: runs while anyone
    waits, one query a round whatever their number."""

    owner: AsyncSagaClient
    loop: asyncio.AbstractEventLoop
    waiters: dict[str, list[_Waiter]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    failed_rounds: int = 0  # in a row

    def add(self, saga_id: str, newer_than: int | None) -> _Waiter:
        waiter = _Waiter(saga_id, newer_than, self.loop.create_future())
        self.waiters.setdefault(saga_id, []).append(waiter)
        self.arrived.set()
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._run())
        return waiter

    def remove(self, waiter: _Waiter) -> None:
        same = self.waiters.get(waiter.saga_id, [])
        if waiter in same:
            same.remove(waiter)
        if not same:
            self.waiters.pop(waiter.saga_id, None)

    async def stop(self, reason: Exception) -> None:
        """End the watcher; every pending wait raises `reason`."""
        if self.task is not None and self.loop is asyncio.get_running_loop():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        elif self.task is not None:  # another loop's watcher: stopped on its own loop
            with contextlib.suppress(RuntimeError):  # that loop is closed already
                self.loop.call_soon_threadsafe(self.task.cancel)
            return
        self.fail(list(self.waiters), reason)

    def fail(self, saga_ids: list[str], problem: Exception) -> None:
        for saga_id in saga_ids:
            for waiter in self.waiters.get(saga_id, []):
                if not waiter.future.done():
                    waiter.future.set_exception(problem)

    async def _run(self) -> None:
        pause = FIRST_ROUND_SECONDS
        while self.waiters:
            self.arrived.clear()
            asked = list(self.waiters)
            try:
                found = await self._round(asked)
                self.failed_rounds = 0
            except Exception as exc:
                # Once more first: a pooled connection the server dropped fails once. Then, as
                # SagaClient.wait does, a store that does not answer is the waiters' error.
                self.failed_rounds += 1
                logger.warning("waiting for sagas: cannot read the store (%s)", exc)
                if self.failed_rounds > 1:
                    self.fail(asked, exc)
                found = True
            pause = FIRST_ROUND_SECONDS if found else min(pause * 2, SLOWEST_ROUND_SECONDS)
            # Never back to back: waiters arriving all the time still share rounds.
            await asyncio.sleep(FIRST_ROUND_SECONDS)
            if pause > FIRST_ROUND_SECONDS and not self.arrived.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.arrived.wait(), pause - FIRST_ROUND_SECONDS)
            if self.arrived.is_set():
                pause = FIRST_ROUND_SECONDS

    async def _round(self, asked: list[str]) -> bool:
        """Read the state of the sagas `asked` about; load and hand over the finished ones.
        True if any waiter was answered."""
        versions = await self.owner._call(self.owner._versions, asked)
        ready = [
            saga_id
            for saga_id, (state, version) in versions.items()
            if any(w.satisfied_by(state, version) for w in self.waiters.get(saga_id, []))
        ]
        answered = False
        for saga_id in ready:
            try:
                saga = await self.owner._call(self.owner._load, saga_id)
            except Exception as exc:  # this saga's waiters learn why; the others go on
                self.fail([saga_id], exc)
                answered = True
                continue
            if saga is None:
                continue
            for waiter in self.waiters.get(saga_id, []):
                if not waiter.future.done() and waiter.satisfied_by(saga.state, saga.version):
                    waiter.future.set_result(saga)
                    answered = True
        return answered


__all__ = ["AsyncSagaClient"]
