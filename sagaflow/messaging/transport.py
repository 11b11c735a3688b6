"""kombu's filesystem transport, made safe for several processes sharing one folder.

The stock transport writes a message file in place and readers move it to the temp folder, so a
reader can take a file the writer has not finished (the worker then dies on a JSON error), and
two readers can both copy a file when the temp folder is on another filesystem. Exchange tables
(queue bindings, written when workers start) have the same window: a file created empty before
it is locked. Here writers publish by atomic rename and readers claim a message by atomic rename
inside the same folder; bindings are updated under a lock file and replaced atomically. An event
queue declared with an expiry (`x-expires`, Celery's `celeryev.*`) is unbound, and its messages
deleted, once no consumer has polled it for that long (at least MIN_QUEUE_EXPIRY), as RabbitMQ
deletes an unused queue: a stopped Flower no longer leaves every task event to pile up.

kombu's Redis transport, publishing through one client per channel: the stock channel builds a
new `redis.Redis` for every message it sends (task messages and every task event), and that
constructor, which copies the client's table of response callbacks, costs more than the publish
itself.

Both apply to sagaflow's own Celery apps only, named by their `broker_transport` setting
(`transport_for`): kombu's TRANSPORT_ALIASES, which every app and connection of the process
shares, are left alone, so another app's `redis://` keeps kombu's transport. The classes
override private kombu methods (`_put`, `_get`, `_queue_bind`, `get_table`, `_create_client`,
`_connparams`): pyproject.toml bounds kombu to the minor versions tested, and
tests/unit/test_transport_scope.py checks that each overridden method still exists upstream.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from queue import Empty
from typing import Any

from kombu.transport import filesystem
from kombu.transport import redis as redis_transport
from kombu.transport.base import to_rabbitmq_queue_arguments
from redis.exceptions import ConnectionError as RedisConnectionError

PARTIAL_READ_DEADLINE = 5.0
# Polling stands in for "has a consumer": a live consumer blocked for a while (a long task on
# the solo pool) must not lose its queue, so expiries shorter than this are lengthened.
MIN_QUEUE_EXPIRY = 60.0
USE_MARK_EVERY = 1.0
EXPIRY_MARK = ".expires-"
# Only event queues expire: their consumers (Flower, `celery events`) poll all the time and their
# messages are disposable (a 5 s TTL). A worker polls its pidbox or a task queue only while its
# prefetch has room, so those must never expire here, whatever they were declared with.
EVENT_QUEUE_PREFIX = "celeryev."


class Channel(filesystem.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._expiring: dict[str, float] = {}  # queue -> seconds, for queues this channel declared
        self._marked: dict[str, float] = {}  # queue -> when this channel last marked it used

    def prepare_queue_arguments(self, arguments: Any, **kwargs: Any) -> Any:
        # kombu's virtual channels drop `expires` and `message_ttl`; keep them, as Redis does.
        return to_rabbitmq_queue_arguments(arguments, **kwargs)

    def queue_declare(self, queue: Any = None, passive: bool = False, **kwargs: Any) -> Any:
        declared = super().queue_declare(queue, passive, **kwargs)  # type: ignore[no-untyped-call]
        expires_ms = (kwargs.get("arguments") or {}).get("x-expires")
        if expires_ms and not passive and str(declared.queue).startswith(EVENT_QUEUE_PREFIX):
            self._expiring[declared.queue] = max(float(expires_ms) / 1000, MIN_QUEUE_EXPIRY)
            self._mark_used(declared.queue)
        return declared

    def _expiry_mark(self, queue: str) -> Path:
        return Path(self.control_folder) / f"{EXPIRY_MARK}{queue}"

    def _mark_used(self, queue: str) -> None:
        """The queue's expiry mark holds its expiry; its modification time is its last use."""
        now = time.monotonic()
        if now - self._marked.get(queue, -USE_MARK_EVERY) < USE_MARK_EVERY:
            return
        self._marked[queue] = now
        mark = self._expiry_mark(queue)
        try:
            try:
                os.utime(mark)
            except FileNotFoundError:
                self._bind_again(queue, mark)
        except OSError:
            # A consumer's poll must not fail on its bookkeeping: try again at the next poll.
            self._marked.pop(queue, None)

    def _bind_again(self, queue: str, mark: Path) -> None:
        """New, or pruned while this consumer was away: bind it again before it polls on."""
        self.control_folder.mkdir(exist_ok=True)
        partial = mark.with_name(f".writing-{uuid.uuid4()}")
        partial.write_text(str(self._expiring[queue]))
        os.replace(partial, mark)
        for exchange, routing_key, arguments in list(self.state.queue_bindings(queue)):
            exchange_type = self.typeof(exchange)  # type: ignore[no-untyped-call]
            meta = exchange_type.prepare_bind(queue, exchange, routing_key, arguments)
            self._queue_bind(exchange, *meta)

    def _expired(self, queue: str) -> bool:
        mark = self._expiry_mark(queue)
        try:
            last_used = mark.stat().st_mtime
            expiry = float(mark.read_text())
        except (OSError, ValueError):
            return False  # not an expiring queue, or its mark is being written
        return time.time() - last_used > expiry

    def _put(self, queue: Any, message: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        folder = self.data_folder_out
        partial = os.path.join(folder, f".writing-{name}")
        with open(partial, "wb") as f:
            f.write(json.dumps(message).encode())
        os.rename(partial, os.path.join(folder, name))

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        if queue in self._expiring:
            self._mark_used(queue)
        suffix = f"{queue}.msg"
        folder = self.data_folder_in
        for filename in sorted(os.listdir(folder)):
            if filename.startswith(".") or filename.partition(".")[2] != suffix:
                continue
            claimed = os.path.join(folder, f".claimed-{os.getpid()}-{filename}")
            try:
                os.rename(os.path.join(folder, filename), claimed)
            except OSError:
                continue  # another consumer claimed it first
            return _read_complete(claimed)
        raise Empty()

    def queue_bind(
        self,
        queue: Any,
        exchange: Any = None,
        routing_key: Any = "",
        arguments: Any = None,
        **kwargs: Any,
    ) -> None:
        super().queue_bind(queue, exchange, routing_key, arguments, **kwargs)  # type: ignore[no-untyped-call]
        # kombu skips the write when its in-process binding cache (shared by every connection
        # of the process) already has the binding, though the thread that cached it may not
        # have written it yet; publishing then finds no route and drops the message.
        # Writing is idempotent here, so always make sure the binding is on disk.
        exchange = exchange or "amq.direct"
        exchange_type = self.typeof(exchange)  # type: ignore[no-untyped-call]
        meta = exchange_type.prepare_bind(queue, exchange, routing_key, arguments)
        self._queue_bind(exchange, *meta)

    def get_table(self, exchange: Any) -> Any:
        table = self._read_table(exchange)
        expired = {b.queue for b in table if self._expired(b.queue)}
        if expired:
            with contextlib.suppress(OSError):  # pruned by the next publisher instead
                self._prune(exchange, expired)
            table = [b for b in table if b.queue not in expired]
        return table

    def _read_table(self, exchange: Any) -> list[Any]:
        path = self._exchange_file(exchange)  # type: ignore[no-untyped-call]
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            return []
        return [filesystem.exchange_queue_t(*q) for q in json.loads(content)]

    def _prune(self, exchange: Any, queues: set[str]) -> None:
        """Unbind expired queues and delete their messages (as RabbitMQ deletes the queue).
        Checked again under the table's lock, where a returning consumer binds again: one
        that came back since (a fresh mark) keeps its queue."""
        with self._table_lock(exchange):
            queues = {queue for queue in queues if self._expired(queue)}
            if not queues:
                return
            table = [b for b in self._read_table(exchange) if b.queue not in queues]
            self._write_table(exchange, table)
            for queue in queues:
                with contextlib.suppress(FileNotFoundError):
                    self._expiry_mark(queue).unlink()
            folder = self.data_folder_in
            suffixes = {f"{queue}.msg" for queue in queues}
            for filename in os.listdir(folder):
                if filename.partition(".")[2] in suffixes:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(folder, filename))

    @contextlib.contextmanager
    def _table_lock(self, exchange: Any) -> Iterator[None]:
        path = self._exchange_file(exchange)  # type: ignore[no-untyped-call]
        self.control_folder.mkdir(exist_ok=True)
        with open(path.with_name(f".{path.name}.lock"), "a") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    def _write_table(self, exchange: Any, table: list[Any]) -> None:
        path = self._exchange_file(exchange)  # type: ignore[no-untyped-call]
        partial = path.with_name(f".writing-{uuid.uuid4()}-{path.name}")
        partial.write_bytes(json.dumps([list(b) for b in table]).encode())
        os.replace(partial, path)

    def _queue_bind(self, exchange: Any, routing_key: Any, pattern: Any, queue: Any) -> None:
        binding = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        with self._table_lock(exchange):
            table = self._read_table(exchange)
            if binding in table:
                return
            table.insert(0, binding)
            self._write_table(exchange, table)


def _read_complete(path: str) -> Any:
    """Read a claimed message, waiting out a writer that still holds it (non-atomic writers)."""
    deadline = time.monotonic() + PARTIAL_READ_DEADLINE
    while True:
        with open(path, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # the lock kombu's writers hold
            try:
                payload = f.read()
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        try:
            message = json.loads(payload)
        except ValueError:
            if time.monotonic() < deadline:
                time.sleep(0.002)
                continue
            os.rename(path, path.replace(".claimed-", ".corrupt-", 1))
            raise Empty() from None
        os.remove(path)
        return message


class Transport(filesystem.Transport):
    Channel = Channel


class RedisChannel(redis_transport.Channel):
    _publish_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        client = self._publish_client
        # A client is a handle on the pool (each command borrows a connection), safe to share;
        # a new one only when the channel has replaced its pool.
        if client is None or client.connection_pool is not self.pool:
            client = self._publish_client = super()._create_client()  # type: ignore[no-untyped-call]
        return client

    def _connparams(self, asynchronous: bool = False) -> Any:
        # kombu clears a transport's client when its connection closes. Closing a channel after
        # that (it restores its unacknowledged messages) or a late ack then failed with an
        # AttributeError, which Celery takes as fatal: the worker exited when Redis went away
        # with a task in flight. Raised as the connection error it is, Celery reconnects.
        if self.connection is None or self.connection.client is None:
            raise RedisConnectionError("the Redis connection is closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]


class RedisTransport(redis_transport.Transport):
    Channel = RedisChannel


SAGAFLOW_TRANSPORTS = {
    "filesystem": f"{__name__}:Transport",
    "redis": f"{__name__}:RedisTransport",
    "rediss": f"{__name__}:RedisTransport",
}


def broker_scheme(url: str) -> str:
    return url.split(";", 1)[0].partition("://")[0].lower()


def transport_for(url: str) -> str | None:
    """sagaflow's transport class for broker `url` (a `broker_transport` value), or None to let
    kombu choose: another broker, or a URL naming its transport itself (`sqla+sqlite://`)."""
    return SAGAFLOW_TRANSPORTS.get(broker_scheme(url))
