"""The plain-chain baseline: the same no-op work as a stock Celery app, with none of sagaflow.

It takes the same Celery settings as sagaflow's processes (JSON, acks_late, prefetch 1, task
events on) but not sagaflow's app factory, so its worker runs stock Celery and kombu: what a
Celery user has today. Run as `celery -A benchmarks.chain_tasks worker -Q bench` (the benchmark
starts it).
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery, chain

from sagaflow.config import Settings, celery_settings

app = Celery("chain")
app.conf.update(celery_settings(Settings.from_env()), task_default_queue="bench")
_redis = redis.Redis.from_url(os.environ.get("BENCH_SIGNAL_URL", "redis://127.0.0.1:6379/12"))
DONE_LIST = "bench:chain-done"


class Refused(Exception):
    pass


@app.task(name="bench.chain_step")
def chain_step(previous: Any, chain_id: str, n: int, fail_at: int) -> int:
    if n == fail_at:
        raise Refused(f"step {n} fails as asked")
    return n


@app.task(name="bench.chain_undo")
def chain_undo(chain_id: str, n: int) -> int:
    return n


@app.task(name="bench.chain_done")
def chain_done(previous: Any, chain_id: str) -> None:
    _redis.rpush(DONE_LIST, chain_id)


@app.task(name="bench.chain_failed")
def chain_failed(failed_task_id: str, chain_id: str, completed: int) -> None:
    """The chain's errback: undo the completed steps one by one, in reverse, then signal."""
    undos = [chain_undo.si(chain_id, n).set(queue="bench") for n in range(completed, 0, -1)]
    chain(*undos, chain_done.s(chain_id).set(queue="bench")).apply_async()
