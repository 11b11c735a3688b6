"""Turning saga records into rich tables and JSON (shared by the CLI and the dashboard)."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from rich.table import Table
from rich.text import Text

from sagaflow.core.machine import SagaRecord, StepRecord
from sagaflow.core.quarantine import QuarantinedMessage
from sagaflow.core.search import key_value
from sagaflow.store.protocol import HistoryRow
from sagaflow.terminal import STEP_MARK
from sagaflow.terminal import state_text as state_text  # the CLI prints states as these tables do


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def step_json(step: StepRecord) -> dict[str, Any]:
    return {
        "position": step.position,
        "name": step.name,
        "action": step.action,
        "compensation": step.compensation,
        "queue": step.queue,
        "pivot": step.pivot,
        "retriable": step.retriable,
        "timeout": step.timeout,
        "on_timeout": step.on_timeout.value if step.on_timeout else None,
        "verify": step.verify,
        "verify_attempts": step.verify_attempts,
        "verify_task_id": step.verify_task_id,
        "deadline_at": _iso(step.deadline_at),
        "status": step.status.value,
        "result": step.result,
        "error": step.error.to_json() if step.error else None,
        "attempts": step.attempts,
        "compensation_attempts": step.compensation_attempts,
        "task_id": step.task_id,
        "compensation_task_id": step.compensation_task_id,
        "started_at": _iso(step.started_at),
        "finished_at": _iso(step.finished_at),
        "compensation_started_at": _iso(step.compensation_started_at),
        "compensated_at": _iso(step.compensated_at),
    }


def saga_json(saga: SagaRecord, with_steps: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "saga_id": saga.saga_id,
        "saga_type": saga.saga_type,
        "state": saga.state.value,
        "current_step": saga.steps[saga.current_step].name
        if saga.current_step is not None and saga.current_step < len(saga.steps)
        else None,
        "version": saga.version,
        "error": saga.error.to_json() if saga.error else None,
        "data": saga.data,
        "created_at": _iso(saga.created_at),
        "updated_at": _iso(saga.updated_at),
        "finished_at": _iso(saga.finished_at),
        "deadline_at": _iso(saga.deadline_at),
    }
    if with_steps:
        data["steps"] = [step_json(s) for s in saga.steps]
    return data


def history_json(row: HistoryRow) -> dict[str, Any]:
    return {
        "at": row.at.isoformat(),
        "event": row.event,
        "from_state": row.from_state,
        "to_state": row.to_state,
        "step": row.step,
        "detail": row.detail,
    }


def steps_text(saga: SagaRecord) -> Text:
    text = Text()
    for i, step in enumerate(saga.steps):
        if i:
            text.append("  ")
        mark, style = STEP_MARK[step.status]
        text.append(f"{step.name} {mark}", style=style)
    return text


def age(since: datetime | None, now: datetime | None = None) -> str:
    if since is None:
        return ""
    seconds = ((now or datetime.now(timezone.utc)) - since).total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    return age(start, end)


def saga_list_table(
    sagas: list[SagaRecord], title: str | None = None, keys: Sequence[str] = ()
) -> Table:
    table = Table(title=title)
    table.add_column("saga id", no_wrap=True)
    table.add_column("type")
    for key in keys:
        table.add_column(key)
    table.add_column("state")
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("took", justify="right")
    table.add_column("error", overflow="fold")
    for saga in sagas:
        table.add_row(
            saga.saga_id,
            saga.saga_type,
            *(_key_text(key_value(saga.data, key)) for key in keys),
            state_text(saga.state),
            saga.created_at.strftime("%Y-%m-%d %H:%M:%S") if saga.created_at else "",
            duration(saga.created_at, saga.finished_at),
            str(saga.error) if saga.error else "",
        )
    return table


def moment(at: datetime | None) -> str:
    """A time an operator can place: date, time to the millisecond, and zone (UTC)."""
    if at is None:
        return ""
    return at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def pretty_json(value: Any) -> str:
    """JSON to read: indented, text as it is (no \\u escapes; the page escapes HTML)."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, separators=(", ", ": "))


def _key_text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def saga_steps_table(saga: SagaRecord) -> Table:
    table = Table(title=f"saga {saga.saga_id}")
    table.add_column("#", justify="right")
    table.add_column("step")
    table.add_column("status")
    table.add_column("action → queue")
    table.add_column("tries", justify="right")
    table.add_column("took", justify="right")
    table.add_column("compensation")
    table.add_column("error", overflow="fold")
    for step in saga.steps:
        mark, style = STEP_MARK[step.status]
        compensation = step.compensation or "—"
        if step.compensation_attempts:
            compensation += f" (tries {step.compensation_attempts})"
        table.add_row(
            str(step.position + 1),
            step.name,
            Text(f"{mark} {step.status.value}", style=style),
            f"{step.action} → {step.queue or 'default'}",
            str(step.attempts),
            duration(step.started_at, step.finished_at),
            compensation,
            str(step.error) if step.error else "",
        )
    return table


def history_table(rows: list[HistoryRow]) -> Table:
    table = Table()
    table.add_column("at (UTC)", no_wrap=True)
    table.add_column("event")
    table.add_column("state")
    table.add_column("step")
    table.add_column("detail", overflow="fold")
    for row in rows:
        transition = (
            row.to_state
            if row.from_state in (None, row.to_state)
            else (f"{row.from_state} → {row.to_state}")
        )
        detail = ", ".join(f"{k}={_detail_value(v)}" for k, v in (row.detail or {}).items())
        table.add_row(
            row.at.strftime("%H:%M:%S.%f")[:-3], row.event, transition, row.step or "", detail
        )
    return table


def _detail_value(value: Any) -> str:
    if isinstance(value, dict) and "type" in value:
        return f"{value['type']}: {value.get('message', '')}"
    return str(value)


def quarantined_json(record: QuarantinedMessage, with_body: bool = True) -> dict[str, Any]:
    """A quarantined message as the CLI's --json and the dashboard's API show it: the body as
    text when it is UTF-8, else base64."""
    data = record.to_json()
    data["replayable"] = record.replayable
    data.pop("body")
    if with_body:
        text = body_text(record.body)
        if text is not None:
            data["body_text"] = text
        else:
            data["body_base64"] = base64.b64encode(record.body).decode()
    return data


def body_text(body: bytes) -> str | None:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None
