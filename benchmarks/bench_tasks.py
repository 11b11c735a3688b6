"""No-op service tasks for sagaflow's benchmark saga (the plain chain's are in chain_tasks.py).

Run as `celery -A benchmarks.bench_tasks worker -Q bench` (the benchmark starts it).
"""

from __future__ import annotations

from typing import Any

from sagaflow import create_service_app

app = create_service_app("bench")


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
