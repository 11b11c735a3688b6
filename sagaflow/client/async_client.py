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

from sagaflow.client.saga_client import Durability, SagaClient, StartReceipt, describe_saga
from sagaflow.client.validation import check_saga_id
from sagaflow.config import Settings
from sagaflow.core.machine import SagaRecord
from sagaflow.core.vocabulary import SagaState
from sagaflow.errors import ConfigurationError, SagaTimeout
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


class AsyncSagaClient:
    """Start sagas and read them from asyncio code without blocking the event loop.

    Every method of SagaClient, as a coroutine: `start`, `submit`, `status`, `list_sagas`,
    `history`, `wait`, `cancel`, `retry`, `mark_compensated`, `resolve`, `drain_outbox`.
    Use one client per process (it holds the store's and the broker's connection pools) and
    `await client.aclose()` at shutdown, or `async with AsyncSagaClient() as client:`.

    `threads` bounds how many calls run at once; more wait their turn without blocking.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client: SagaClient | None = None,
        durability: Durability | str = Durability.OUTBOX,
        threads: int = DEFAULT_THREADS,
    ) -> None:
        if not isinstance(threads, int) or threads < 1:
            raise ConfigurationError(f"threads must be a whole number >= 1, not {threads!r}")
        if client is not None and settings is not None:
            raise ConfigurationError("give settings or a SagaClient, not both")
        self.client = client or SagaClient(settings, durability=durability)
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
                    _ = self.client.app, self.client.store
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
        """Sagas newest first; filters: state, saga_type, since, id_prefix, limit, offset."""
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
        loop = asyncio.get_running_loop()
        if self._watcher is None or self._watcher.loop is not loop:
            self._watcher = _Watcher(self, loop)
        watcher = self._watcher
        waiter = watcher.add(saga_id, newer_than)
        try:
            return await asyncio.wait_for(waiter.future, timeout)
        except asyncio.TimeoutError:
            last = await self._call(self.client.store.load, saga_id)
            where = "not recorded yet" if last is None else describe_saga(last)
            raise SagaTimeout(f"saga {saga_id} not finished after {timeout:g}s: {where}") from None
        finally:
            watcher.remove(waiter)

    async def aclose(self) -> None:
        """Stop the watcher, let calls under way finish, release the store's connections."""
        if self._closed:
            return
        if self._watcher is not None:
            await self._watcher.stop()
            self._watcher = None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.client.close)
        self._closed = True
        self._executor.shutdown(wait=False)


@dataclass(eq=False)
class _Waiter:
    saga_id: str
    newer_than: int | None
    future: asyncio.Future[SagaRecord]

    def satisfied_by(self, state: SagaState, version: int) -> bool:
        return state.is_terminal and (self.newer_than is None or version > self.newer_than)


@dataclass(eq=False)
class _Watcher:
    """The one loop that reads the store for every waiter of a client: runs while anyone
    waits, one query a round whatever their number."""

    owner: AsyncSagaClient
    loop: asyncio.AbstractEventLoop
    waiters: dict[str, list[_Waiter]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    problem: str | None = None  # why the last round failed, for one warning per outage

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

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        pause = FIRST_ROUND_SECONDS
        while self.waiters:
            self.arrived.clear()
            try:
                found = await self._round()
                self.problem = None
            except Exception as exc:  # the store does not answer: waiters time out with it
                found = False
                if self.problem is None:
                    logger.warning("waiting for sagas: cannot read the store (%s)", exc)
                self.problem = str(exc)
            pause = FIRST_ROUND_SECONDS if found else min(pause * 2, SLOWEST_ROUND_SECONDS)
            try:
                await asyncio.wait_for(self.arrived.wait(), pause)
                pause = FIRST_ROUND_SECONDS
            except asyncio.TimeoutError:
                pass

    async def _round(self) -> bool:
        """Read every waited-for saga's state; load and hand over the finished ones. True if
        any waiter was answered."""
        store = self.owner.client.store
        versions = await self.owner._call(store.versions, list(self.waiters))
        ready = [
            saga_id
            for saga_id, (state, version) in versions.items()
            if any(w.satisfied_by(state, version) for w in self.waiters.get(saga_id, []))
        ]
        answered = False
        for saga_id in ready:
            saga = await self.owner._call(store.load, saga_id)
            if saga is None:
                continue
            for waiter in self.waiters.get(saga_id, []):
                if not waiter.future.done() and waiter.satisfied_by(saga.state, saga.version):
                    waiter.future.set_result(saga)
                    answered = True
        return answered


__all__ = ["AsyncSagaClient"]
