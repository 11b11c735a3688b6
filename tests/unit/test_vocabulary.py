"""sagaflow's names are written once, in sagaflow.core.vocabulary, and used as members elsewhere.

The values are a stored and wire format: rows and messages written by earlier versions carry
them, so they are pinned here, and the source is checked for the names written as text.
"""

from __future__ import annotations

import ast
import json
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from sagaflow.core.machine import ErrorInfo, SagaRecord
from sagaflow.core.vocabulary import (
    ErrorType,
    HistoryEvent,
    OnTimeout,
    OperatorAction,
    Phase,
    SagaOutcome,
    SagaState,
    StepStatus,
)
from sagaflow.engine.orchestrator import RecoveryReport
from sagaflow.ops.metrics import NEEDS_OPERATOR, SagaMetrics
from sagaflow.store.factory import open_store

PACKAGE = Path(__file__).resolve().parents[2] / "sagaflow"
DEFINITION = PACKAGE / "core" / "vocabulary.py"
EVENTS = {e.value for e in HistoryEvent}
ERROR_TYPES = {e.value for e in ErrorType}  # shared with nothing sagaflow writes as text
VOCABULARY = [SagaState, StepStatus, Phase, HistoryEvent, SagaOutcome, ErrorType]
VOCABULARY += [OnTimeout, OperatorAction]
# Event names that also name something else (a state, a recovery report's field): flagged only
# where they are used as an event.
SHARED = EVENTS & (
    {s.value for s in SagaState}
    | {s.value for s in StepStatus}
    | {f.name for f in fields(RecoveryReport)}
)


def test_stored_values_are_pinned() -> None:
    assert [e.value for e in HistoryEvent] == [
        "saga_requested",
        "saga_recorded",
        "saga_rejected",
        "saga_started",
        "step_dispatched",
        "step_completed",
        "step_failed",
        "step_retry_scheduled",
        "step_retried",
        "step_redriven",
        "step_timed_out",
        "verify_dispatched",
        "verify_redriven",
        "step_verified",
        "step_resolved",
        "saga_escalated",
        "compensation_started",
        "compensation_dispatched",
        "compensation_redriven",
        "step_compensated",
        "compensation_failed",
        "compensation_retried",
        "step_compensated_manually",
        "saga_completed",
        "saga_failed",
        "saga_cancelled",
        "cancel_requested",
        "deadline_exceeded",
        "deadline_dropped",
        "outcome_ignored",
    ]
    assert [e.value for e in ErrorType] == [
        "Unknown",
        "UnknownError",
        "NotRegistered",
        "StepTimeout",
        "VerifyTimeout",
        "InvalidVerifyReply",
        "NotApplied",
        "Cancelled",
        "DeadlineExceeded",
    ]
    assert [e.value for e in OnTimeout] == ["compensate", "fail", "verify", "escalate"]
    assert [e.value for e in OperatorAction] == ["retry", "mark_compensated", "cancel", "resolve"]
    assert [e.value for e in SagaOutcome] == [
        "Completed",
        "Failed",
        "Cancelled",
        "CompensationFailed",
        "Escalated",
    ]


@pytest.mark.parametrize("names", VOCABULARY, ids=lambda e: e.__name__)
def test_a_name_is_its_text(names: Any) -> None:
    for member in names:
        assert member == member.value and hash(member) == hash(member.value)
        assert json.dumps({member: member}) == json.dumps({member.value: member.value})
        assert names(member.value) is member
        # print(saga.state) and f-strings show the text an operator reads everywhere else
        assert str(member) == f"{member}" == f"{member:>1}" == member.value


def test_new_names_read_as_their_text_in_messages() -> None:
    error = ErrorInfo(ErrorType.STEP_TIMEOUT, "no outcome")
    assert (
        str(error) == "StepTimeout: no outcome" and f"{HistoryEvent.SAGA_FAILED}" == "saga_failed"
    )
    assert type(error.to_json()["type"]) is str


# -- the source writes members, not their text ---------------------------------------------------


def _is_event_operand(node: ast.AST) -> bool:
    """`row.event`, `row["event"]` or a bare `event`: what a history row's event is read as."""
    if isinstance(node, ast.Attribute):
        return node.attr == "event"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "event"
    return isinstance(node, ast.Name) and node.id == "event"


def _strings(node: ast.AST) -> list[ast.Constant]:
    items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return [n for n in items if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _event_uses(tree: ast.AST) -> set[int]:
    """Ids of the string constants used as an event: HistoryEntry's first argument or `event=`,
    compared with a row's event, or among other event names (a dict's keys, a tuple)."""
    used: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict | ast.Tuple | ast.List | ast.Set):
            items = node.keys if isinstance(node, ast.Dict) else node.elts
            names = [
                item
                for item in items
                if isinstance(item, ast.Constant) and isinstance(item.value, str)
                if item.value in EVENTS
            ]
            if any(name.value not in SHARED for name in names):
                used.update(id(name) for name in names)
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name == "HistoryEntry" and node.args:
                used.update(id(c) for c in _strings(node.args[0]))
            for keyword in node.keywords:
                if keyword.arg == "event":
                    used.update(id(c) for c in _strings(keyword.value))
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_is_event_operand(o) for o in operands):
                used.update(id(c) for o in operands for c in _strings(o))
    return used


def _value_matches(tree: ast.AST) -> list[ast.Constant]:
    """Strings compared with an enum's `.value`: a name matched as text, which nothing checks
    (a misspelt or made-up one just never matches)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Attribute) and o.attr == "value" for o in operands):
                found += [c for o in operands for c in _strings(o)]
    return found


def literal_names(source: str) -> list[tuple[int, str]]:
    """(line, text) of each history event name, error type of sagaflow's or enum value written
    as text in `source`."""
    tree = ast.parse(source)
    as_event = _event_uses(tree)
    found = [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and (
            (node.value in EVENTS and (node.value not in SHARED or id(node) in as_event))
            or node.value in ERROR_TYPES
        )
    ]
    found += [(c.lineno, c.value) for c in _value_matches(tree)]
    return sorted(found)


def test_the_checker_finds_names_written_as_text() -> None:
    source = """
entry = HistoryEntry("step_completed", None, state)
other = HistoryEntry(event="compensation_failed", from_state=None, to_state=state)
done = [h for h in rows if h.event == "compensation_failed" or h["event"] in ("deadline_exceeded",)]
OUTCOMES = {"step_failed": ("action", "failed"), "compensation_failed": ("compensation", "x")}
waiting = [s for s in SagaState if s.value in ("compensation_failed", "needs_operator")]
fine = {"deadline_exceeded": 1, "state": "compensation_failed", "phase": "action"}
error = ErrorInfo(type="StepTimeout", message="late")
"""
    assert literal_names(source) == [
        (2, "step_completed"),
        (3, "compensation_failed"),
        (4, "compensation_failed"),
        (4, "deadline_exceeded"),
        (5, "compensation_failed"),
        (5, "step_failed"),
        (6, "compensation_failed"),
        (6, "needs_operator"),
        (8, "StepTimeout"),
    ]


def test_no_name_is_written_as_text_outside_the_vocabulary() -> None:
    modules = sorted(p for p in PACKAGE.rglob("*.py") if p != DEFINITION)
    assert len(modules) > 50
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}"
        for path in modules
        for line, text in literal_names(path.read_text())
    ]
    assert found == [], "use the members of sagaflow.core.vocabulary:\n" + "\n".join(found)


# -- the metrics name real states ----------------------------------------------------------------


def test_waiting_for_an_operator_means_compensation_failed_or_escalated() -> None:
    assert {s for s in SagaState if s.needs_operator} == {
        SagaState.COMPENSATION_FAILED,
        SagaState.ESCALATED,
    }
    assert set(NEEDS_OPERATOR) == {s for s in SagaState if s.needs_operator}


def test_the_operator_gauge_counts_every_state_waiting_for_an_operator(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    store.upgrade()
    now = datetime.now(timezone.utc)
    for state in SagaState:
        saga = SagaRecord(f"s-{state.value}", "order", state, {}, (), created_at=now)
        assert store.create(saga)
    samples = {
        (sample.name, sample.labels.get("saga_type")): sample.value
        for metric in SagaMetrics(store).collect()
        for sample in metric.samples
    }
    store.dispose()
    waiting = sum(1 for s in SagaState if s.needs_operator)
    assert waiting == 2
    assert samples[("sagaflow_sagas_needing_operator", "order")] == waiting
