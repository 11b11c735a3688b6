"""No-op service tasks shared by every contender, and the plain-chain baseline's tasks.

Run as `celery -A benchmarks.bench_tasks worker -Q bench` (the benchmark starts it).
"""

from __future__ import annotations

import os
from typing import Any

import redis

from sagaflow import create_service_app

app = create_service_app("bench")
_redis = redis.Redis.from_url(os.environ.get("BENCH_SIGNAL_URL", "redis://127.0.0.1:6379/12"))
DONE_LIST = "bench:chain-done"


class Refused(Exception):
    pass


# -- sagaflow steps ------------------------------------------------------------------------------


@app.task(name="bench.step")
def step(context: dict[str, Any]) -> dict[str, Any]:
    if context["data"].get("fail_at") == context["step"]:
        raise Refused(f"{context['step']} fails as asked")
    return {"ok": context["step"]}


@app.task(name="bench.undo")
def undo(context: dict[str, Any]) -> None:
    return None


# -- the plain chain: the same work, no durability -----------------------------------------------


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
    from celery import chain

    undos = [chain_undo.si(chain_id, n).set(queue="bench") for n in range(completed, 0, -1)]
    chain(*undos, chain_done.s(chain_id).set(queue="bench")).apply_async()
