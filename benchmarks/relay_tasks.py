"""The floor under sagaflow's shape: its messages, without its store or state machine.

A stateless orchestrator on the same queue, under the same task names, with the same task
options as sagaflow's. It sends each step exactly as sagaflow does (sagaflow.engine.orchestrator's
send_step: the same service worker and step tasks, the success callback and the inline errback
back to this queue) and publishes the saga's outcome to the same events exchange. It records
nothing: what it costs is what Celery and Redis cost for two hops per step, so sagaflow against
it is the price of the store and the state machine, and it against the chain is the price of
the shape itself. Run as `celery -A benchmarks.relay_tasks worker -Q sagaflow`.

It knows one saga, benchmarks.bench_sagas' bench5, and trusts every message it gets. Keeping no
state, it reads the saga's input from its id: a saga whose id starts with FAILING fails at s3.
"""

from __future__ import annotations

import uuid
from typing import Any

from benchmarks.bench_sagas import bench5
from sagaflow.config import Settings
from sagaflow.core.definitions import Phase
from sagaflow.core.protocol import START_TASK, STEP_FAILED_TASK, STEP_SUCCEEDED_TASK
from sagaflow.core.records import DispatchTask
from sagaflow.messaging.app import create_app
from sagaflow.messaging.dispatch import send_step
from sagaflow.messaging.events import KombuEventPublisher

settings = Settings.from_env()
app = create_app("relay", settings)
app.conf.task_default_queue = settings.queue
app.conf.worker_send_task_events = settings.orchestrator_task_events  # as sagaflow's worker
publisher = KombuEventPublisher(app, settings.events_exchange)
STEPS = bench5.steps
TASK_OPTIONS: dict[str, Any] = {"acks_late": True, "ignore_result": True, "shared": False}
FAILING = "fail-"


def send(saga_id: str, position: int, phase: Phase) -> None:
    step = STEPS[position]
    task_name = step.action if phase is Phase.ACTION else step.compensation
    assert task_name is not None
    context: dict[str, Any] = {
        "saga_id": saga_id,
        "saga_type": bench5.saga_type,
        "step": step.name,
        "data": {"fail_at": "s3"} if saga_id.startswith(FAILING) else {},
        "results": {},
        "idempotency_key": f"{saga_id}:{step.name}:{phase.value}",
    }
    command = DispatchTask(
        saga_id, position, phase, 1, task_name, step.queue, str(uuid.uuid4()), context
    )
    send_step(app, settings.queue, command)


def finish(saga_id: str, state: str) -> None:
    publisher.publish(
        f"Bench5{state.capitalize()}",
        {"saga_id": saga_id, "saga_type": bench5.saga_type, "state": state},
    )


def compensate_from(saga_id: str, position: int) -> None:
    """Undo the steps before `position`, last first; the saga has failed once none is left."""
    if position > 0:
        send(saga_id, position - 1, Phase.COMPENSATION)
    else:
        finish(saga_id, "failed")


@app.task(name=START_TASK, **TASK_OPTIONS)
def start(saga_id: str = "", saga_type: str = "", data: Any = None, deadline: Any = None) -> None:
    send(saga_id, 0, Phase.ACTION)


@app.task(name=STEP_SUCCEEDED_TASK, **TASK_OPTIONS)
def step_succeeded(
    result: Any = None, saga_id: str = "", position: int = 0, phase: str = "", **_: Any
) -> None:
    if phase == Phase.COMPENSATION.value:
        compensate_from(saga_id, position)
    elif position + 1 < len(STEPS):
        send(saga_id, position + 1, Phase.ACTION)
    else:
        finish(saga_id, "completed")


@app.task(name=STEP_FAILED_TASK, **TASK_OPTIONS)
def step_failed(saga_id: str = "", position: int = 0, phase: str = "", **_: Any) -> None:
    compensate_from(saga_id, position)
