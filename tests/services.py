"""Test services: one Celery app whose tasks do what the saga input tells them.

Every execution is recorded raw (no idempotency) in `test_executions`, so a step or a
compensation that ran twice, or in the wrong order, shows up in the tests.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from sagaflow import NonRetryable, create_service_app
from sagaflow.sqlite_engine import create_sqlite_engine

app = create_service_app("svc")

metadata = sa.MetaData()
executions = sa.Table(
    "test_executions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("saga_id", sa.String(64), nullable=False, index=True),
    sa.Column("step", sa.String(100), nullable=False),
    sa.Column("phase", sa.String(20), nullable=False),
    sa.Column("task_id", sa.String(255), nullable=True),
    sa.Column("context", sa.JSON, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

_engines: dict[int, sa.engine.Engine] = {}


def effects_engine() -> sa.engine.Engine:
    pid = os.getpid()
    if pid not in _engines:
        _engines[pid] = effects_engine_at(os.environ["TEST_EFFECTS_URL"])
    return _engines[pid]


def effects_engine_at(url: str) -> sa.engine.Engine:
    """An engine on the effects tables. On SQLite: WAL and a long lock wait, as sagaflow's
    store has, since workers write while the tests read."""
    return create_sqlite_engine(url) if url.startswith("sqlite") else sa.create_engine(url)


class Flaky(Exception):
    """A failure worth retrying."""


class GoodbyeForever(NonRetryable):
    """A failure no retry will fix."""


class Declined(NonRetryable):
    """A failure no retry will fix, with data for the programs that read it."""


class StepRefused(Exception):
    """Raised by a test step asked to fail."""


class CompensationRefused(Exception):
    """Raised by a test compensation asked to fail."""


def _record(context: dict[str, Any], phase: str, task_id: str | None) -> int:
    with effects_engine().begin() as conn:
        conn.execute(
            executions.insert().values(
                saga_id=context["saga_id"],
                step=context["step"],
                phase=phase,
                task_id=task_id,
                context=context,
                at=datetime.now(timezone.utc),
            )
        )
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(executions)
                .where(
                    executions.c.saga_id == context["saga_id"],
                    executions.c.step == context["step"],
                    executions.c.phase == phase,
                )
            ).scalar_one()
        )


@app.task(name="svc.act", bind=True)
def act(self: Any, context: dict[str, Any]) -> dict[str, Any]:
    data = context["data"]
    runs = _record(context, "action", self.request.id)
    if runs <= data.get("fail_times", {}).get(context["step"], 0):
        raise Flaky(f"step {context['step']} flaky, run {runs}")
    if context["step"] in data.get("refuse_for_good_at", ()):
        raise GoodbyeForever(f"step {context['step']} will never work")
    if context["step"] in data.get("decline_at", ()):
        raise Declined("card declined", details={"code": "51", "step": context["step"]})
    if data.get("crash_once") == context["step"] and runs == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies mid-step
    if context["step"] in data.get("fail_at", ()):
        raise StepRefused(f"step {context['step']} refused as asked")
    if runs == 1:  # slow the first time only: the step sent again after a lost worker is quick
        time.sleep(data.get("slow_first_run", {}).get(context["step"], 0))
    # Done, but the report comes too late: the step times out with its effect in place.
    time.sleep(data.get("slow_after_effect", {}).get(context["step"], 0))
    if data.get("unencodable_result"):
        return {"tags": {"x"}, "thing": object()}  # kombu's JSON cannot encode either
    if data.get("odd_result"):
        # Values kombu's JSON carries but a strict JSON store does not take as they are.
        return {
            "amount": Decimal("12.50"),
            "at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
            "id": UUID(int=7),
            "raw": b"\x01\x02",
            "nan": float("nan"),
            "nul": "a\x00b",
        }
    return {"step": context["step"], "saw": sorted(context["results"])}


@app.task(name="svc.undo", bind=True)
def undo(self: Any, context: dict[str, Any]) -> dict[str, Any]:
    runs = _record(context, "compensation", self.request.id)
    if runs <= context["data"].get("fail_compensation_times", {}).get(context["step"], 0):
        raise Flaky(f"compensation of {context['step']} flaky, run {runs}")
    if context["step"] in context["data"].get("fail_first_compensation_at", ()) and runs == 1:
        raise CompensationRefused(f"compensation of {context['step']} refused the first time")
    if context["step"] in context["data"].get("fail_compensation_at", ()):
        raise CompensationRefused(f"compensation of {context['step']} refused as asked")
    return {"undone": context["step"], "result_was": context["result"]}


@app.task(name="svc.check", bind=True)
def check(self: Any, context: dict[str, Any]) -> Any:
    """A verify task: did the step's action take effect? (Asked when it timed out.)"""
    _record(context, "verify", self.request.id)
    answers = context["data"].get("verify_answer", {})
    if context["step"] in answers:
        return answers[context["step"]]  # what a test wants the check to say, valid or not
    with effects_engine().connect() as conn:
        runs = conn.execute(
            sa.select(sa.func.count())
            .select_from(executions)
            .where(
                executions.c.saga_id == context["saga_id"],
                executions.c.step == context["step"],
                executions.c.phase == "action",
            )
        ).scalar_one()
    return {"applied": runs > 0, "result": {"checked": context["idempotency_key"]}}
