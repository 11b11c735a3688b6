"""Names and payload shapes of the messages exchanged between services and the orchestrator.

Shared by the orchestrator and the service-side module so both agree without importing each
other. Everything here is JSON.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import math
import re
import traceback as traceback_module
import uuid
from typing import Any

START_TASK = "sagaflow.start"
STEP_SUCCEEDED_TASK = "sagaflow.step_succeeded"
STEP_FAILED_TASK = "sagaflow.step_failed"
RECOVER_TASK = "sagaflow.recover"
OPERATOR_TASK = "sagaflow.operator"  # retry / mark-compensated, sent by SagaClient
# Sent by the orchestrator's liveness monitor: a worker died holding these tasks.
WORKER_LOST_TASK = "sagaflow.worker_lost"
# The errback attached to every step. On a worker that loaded sagaflow.service.tasks it runs inline
# in the failing worker (Celery calls errbacks taking (request, exc, traceback) in-process), so
# the error's type and message travel in the report. Elsewhere it is published with only the
# failed task's id and the orchestrator records that the error is unknown.
ERRBACK_TASK = "sagaflow.errback"

MAX_TRACEBACK_CHARS = 8000
MAX_DETAILS_CHARS = 16_000  # of an error's details, as JSON: they travel in every report
# Deeper saga input is refused: kombu's JSON decoder, and PostgreSQL's, recurse per level.
MAX_INPUT_DEPTH = 64
# Saga ids appear in task ids, routing keys and Flower searches: keep them plain.
SAGA_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,63}$")


def message_embed(body: Any) -> dict[str, Any] | None:
    """The embed (callbacks, errbacks, chain) of a protocol-2 task body `[args, kwargs, embed]`,
    or None if the body has not that shape."""
    if not isinstance(body, (list, tuple)) or len(body) != 3 or not isinstance(body[2], dict):
        return None
    return body[2]


def find_signature(signatures: Any, task_name: str) -> dict[str, Any] | None:
    """The first signature for `task_name` among a message's `signatures` (callbacks or
    errbacks, as dicts), if any."""
    for signature in signatures or ():
        if isinstance(signature, dict) and signature.get("task") == task_name:
            return signature
    return None


def input_problem(value: Any, max_depth: int = MAX_INPUT_DEPTH) -> str | None:
    """Why `value` (decoded JSON) cannot be stored as saga input, or None.

    JSON can carry text that PostgreSQL refuses (NUL characters, lone UTF-16 surrogates written
    as escapes) and nesting deep enough to exhaust a decoder: refused here, with the reason,
    rather than failing in the store. Iterative, so hostile depth cannot exhaust the stack.
    """
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > max_depth:
            return f"nested more than {max_depth} levels deep"
        if isinstance(item, dict):
            for key, child in item.items():
                pending.append((key, depth + 1))
                pending.append((child, depth + 1))
        elif isinstance(item, list):
            pending.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            if "\x00" in item:
                return "a string contains a NUL character, which PostgreSQL cannot store"
            if not _encodes(item):
                return "a string is not valid Unicode text (it holds a lone surrogate)"
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def error_payload(
    exc: BaseException, traceback: Any = None, task_id: str | None = None
) -> dict[str, Any]:
    """A failure as JSON: type (the class name, and `module.QualName` as qualified_type),
    message, (truncated) traceback, and the exception's `details` when it has some (JSON)."""
    if isinstance(traceback, str):
        text = traceback
    elif traceback is not None:
        text = "".join(traceback_module.format_tb(traceback))
    else:
        text = "".join(traceback_module.format_exception(type(exc), exc, exc.__traceback__))
    payload: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": str(exc)[:4000],
        "traceback": text[-MAX_TRACEBACK_CHARS:] if text else None,
        "qualified_type": qualified_name(type(exc)),
    }
    if task_id:
        payload["task_id"] = task_id
    details = getattr(exc, "details", None)
    if details is not None:
        details = strict_json(details)
        size = len(json.dumps(details))
        if size > MAX_DETAILS_CHARS:
            details = f"<omitted: {size} characters of JSON, over {MAX_DETAILS_CHARS}>"
        payload["details"] = details
    return payload


def qualified_name(cls: type) -> str:
    """`module.QualName` of a class: what names it precisely (`Retry.on`, ErrorInfo)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def display_repr(value: Any, limit: int = 1024) -> str:
    """What Flower shows as a task's arguments (Celery's argsrepr/kwargsrepr).

    Celery builds them with its own saferepr, which walks the value in Python and costs about a
    third of sending a task; JSON text is as readable, holds the saga id Flower searches for,
    and comes from C.
    """
    try:
        text = json.dumps(value, ensure_ascii=False, default=str, separators=(", ", ": "))
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def outcome_kwargs(
    saga_id: str, position: int, phase: str, attempt: int, step: str
) -> dict[str, Any]:
    """Keyword arguments carried by callbacks: they identify (saga, step, phase, attempt).

    `step` (the step's name) is there for people reading Flower; the position is what counts.
    """
    return {
        "saga_id": saga_id,
        "step": step,
        "position": position,
        "phase": phase,
        "attempt": attempt,
    }


def strict_json(value: Any, depth: int = 0) -> Any:
    """A copy of `value` that every store accepts as JSON.

    kombu's JSON turns Decimal, datetime, UUID and bytes back into Python objects, and
    PostgreSQL's JSONB refuses NaN and NUL characters: results and errors from services are
    cleaned on arrival so that storing them cannot fail. Decimal, dates and UUIDs become
    strings, bytes base64, NaN and infinities null, sets and tuples lists; NULs are dropped and
    lone surrogates become "?".
    """
    if depth > 200:
        return "<nested too deeply>"
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        value = value.replace("\x00", "")
        return value if _encodes(value) else value.encode("utf-8", "replace").decode()
    if isinstance(value, dict):
        return {strict_json(str(k)): strict_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [strict_json(v, depth + 1) for v in value]
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode()
    return strict_json(repr(value))
