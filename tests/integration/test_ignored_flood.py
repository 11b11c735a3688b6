"""A flood of forged callbacks through the broker costs a bounded history: the first outcomes
the orchestrator ignores are kept in full, the rest only counted."""

from __future__ import annotations

from sagaflow import SagaState, StepStatus
from sagaflow.core.protocol import STEP_FAILED_TASK, STEP_SUCCEEDED_TASK, outcome_kwargs
from sagaflow.core.vocabulary import HistoryEvent
from sagaflow.store.protocol import IGNORED_IN_HISTORY
from tests.conftest import Stack, poll

FORGED = 50


def test_forged_callbacks_are_counted_and_only_the_first_kept_in_the_history(
    stack: Stack,
) -> None:
    # The second step waits on a queue nobody consumes: the saga stays running, its step
    # executing, the step every forged callback claims to report on.
    saga_id = stack.start("orphan", {})
    stack.wait_dispatched(saga_id, 1)
    before = stack.store.get(saga_id)
    claims = outcome_kwargs(saga_id, 1, "action", 1, "lost")
    for n in range(FORGED):
        if n % 2:
            stack.client.app.send_task(
                STEP_SUCCEEDED_TASK, args=[{"forged": n}], kwargs=claims, queue=stack.settings.queue
            )
        else:  # an errback names the failed task in its error: this one names none
            error = {"type": "Forged", "message": f"forged failure {n}"}
            stack.client.app.send_task(
                STEP_FAILED_TASK, kwargs={**claims, "error": error}, queue=stack.settings.queue
            )

    poll(
        lambda: stack.store.ignored(saga_id).count >= FORGED,
        60,
        lambda: (
            f"{stack.store.ignored(saga_id).count} of {FORGED} forged outcomes counted"
            + stack.logs_hint()
        ),
    )
    ignored = stack.store.ignored(saga_id)
    assert ignored.count == FORGED
    assert sorted((c.step, c.outcome, c.count) for c in ignored.by_step) == [
        ("lost", "failed", FORGED // 2),
        ("lost", "succeeded", FORGED // 2),
    ]
    noted = [h for h in stack.store.history(saga_id) if h.event == HistoryEvent.OUTCOME_IGNORED]
    assert len(noted) == IGNORED_IN_HISTORY == 20
    assert all("not by" in str(h.detail and h.detail["reason"]) for h in noted)

    after = stack.store.get(saga_id)
    assert after.state is SagaState.PENDING and after.version == before.version
    assert after.steps[1].status is StepStatus.EXECUTING

    # The operator sees the count where they look.
    status = stack.cli("status", saga_id)
    assert status.returncode == 0, status.stderr
    assert f"{FORGED} outcomes ignored (first 20 in the history)" in status.stdout

    # The log is bounded the same way: a line for each noted outcome, one saying the rest are
    # only counted.
    orchestrator = next(w for w in stack.group.workers if w.spec.name == "orchestrator")
    log = orchestrator.log_path.read_text(errors="replace")
    lines = [line for line in log.splitlines() if saga_id in line]
    assert sum("outcome ignored:" in line for line in lines) == IGNORED_IN_HISTORY
    assert sum("further ones are only counted" in line for line in lines) == 1
