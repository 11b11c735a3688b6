"""Timestamps of Celery's task signals, for benchmarks/breakdown.py's step-by-step timeline.

Loaded into a worker with `celery worker -I benchmarks.probe` and imported by the process that
starts the sagas; records go to the file named by BENCH_PROBE_FILE (nothing is recorded without
it). One line per signal: CLOCK_MONOTONIC nanoseconds, pid, what happened, task name, task id.
CLOCK_MONOTONIC is one clock for every process of the machine and is never stepped, where the
wall clock (time.time_ns) can be set back or forward by NTP while a run is under way, which
makes a later mark read earlier than the one before it. Lines are short and written with
O_APPEND, so processes writing at once do not interleave within a line.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import signals

_path = os.environ.get("BENCH_PROBE_FILE")
_fd = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if _path else None


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def record(kind: str, name: str = "-", task_id: str = "-") -> None:
    if _fd is not None:
        os.write(_fd, f"{now_ns()} {os.getpid()} {kind} {name} {task_id}\n".encode())


def _publish_id(headers: Any) -> str:
    return str(headers.get("id", "-")) if isinstance(headers, dict) else "-"


@signals.before_task_publish.connect  # type: ignore[untyped-decorator]
def _before_publish(sender: Any = None, headers: Any = None, **_: Any) -> None:
    record("publish", str(sender), _publish_id(headers))


@signals.after_task_publish.connect  # type: ignore[untyped-decorator]
def _after_publish(sender: Any = None, headers: Any = None, **_: Any) -> None:
    record("published", str(sender), _publish_id(headers))


@signals.task_received.connect  # type: ignore[untyped-decorator]
def _received(request: Any = None, **_: Any) -> None:
    record("received", request.name, request.id)


@signals.task_prerun.connect  # type: ignore[untyped-decorator]
def _prerun(task_id: Any = None, task: Any = None, **_: Any) -> None:
    record("run", task.name, str(task_id))


@signals.task_postrun.connect  # type: ignore[untyped-decorator]
def _postrun(task_id: Any = None, task: Any = None, **_: Any) -> None:
    record("ran", task.name, str(task_id))
