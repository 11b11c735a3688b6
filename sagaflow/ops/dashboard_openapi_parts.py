"""The pieces the dashboard's OpenAPI description (sagaflow.ops.dashboard_openapi) is made of:
the JSON Schemas of what the API answers, the parameters it takes and its common error answers."""

from __future__ import annotations

from typing import Any

from sagaflow.client.validation import MAX_SAGA_TYPE_LENGTH
from sagaflow.core.definitions import StepStatus
from sagaflow.core.protocol import SAGA_ID_PATTERN
from sagaflow.core.quarantine import QuarantineReason
from sagaflow.core.search import MAX_MATCHES, MAX_PATH_DEPTH
from sagaflow.ops.dashboard_http import MAX_LIMIT, MAX_OFFSET, PAGE_SIZE, STATES

JSON = "application/json"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _record(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


_TIME = {"type": "string", "format": "date-time"}
_TEXT = {"type": "string"}
_COUNT = {"type": "integer", "minimum": 0}

_SAGA_FIELDS: dict[str, Any] = {
    "saga_id": _TEXT,
    "saga_type": _TEXT,
    "state": {"type": "string", "enum": list(STATES)},
    "current_step": _nullable(_TEXT),
    "version": _COUNT,
    "error": _nullable(ref("Failure")),
    "data": {"description": "the saga's input, as it was started"},
    "created_at": _nullable(_TIME),
    "updated_at": _nullable(_TIME),
    "finished_at": _nullable(_TIME),
    "deadline_at": _nullable(_TIME),
}
_STEP_FIELDS: dict[str, Any] = {
    "position": _COUNT,
    "name": _TEXT,
    "action": _TEXT,
    "compensation": _nullable(_TEXT),
    "queue": _nullable(_TEXT),
    "pivot": {"type": "boolean"},
    "retriable": {"type": "boolean"},
    "timeout": _nullable({"type": "number"}),
    "on_timeout": _nullable(_TEXT),
    "verify": _nullable(_TEXT),
    "verify_attempts": _COUNT,
    "verify_task_id": _nullable(_TEXT),
    "deadline_at": _nullable(_TIME),
    "status": {"type": "string", "enum": [s.value for s in StepStatus]},
    "result": {"description": "what the action returned"},
    "error": _nullable(ref("Failure")),
    "attempts": _COUNT,
    "compensation_attempts": _COUNT,
    "task_id": _nullable(_TEXT),
    "compensation_task_id": _nullable(_TEXT),
    "started_at": _nullable(_TIME),
    "finished_at": _nullable(_TIME),
    "compensation_started_at": _nullable(_TIME),
    "compensated_at": _nullable(_TIME),
}

SCHEMAS: dict[str, Any] = {
    "Error": _record(
        {
            "error": _record(
                {
                    "type": {**_TEXT, "description": "the error's kind, e.g. SagaNotFound"},
                    "message": {**_TEXT, "description": "what went wrong, for a person"},
                }
            )
        }
    ),
    "Failure": {
        "description": "An error a step or the saga met.",
        "type": "object",
        "properties": {
            "type": _TEXT,
            "message": _TEXT,
            "traceback": _TEXT,
            "task_id": _TEXT,
            "non_retryable": {"type": "boolean"},
            "qualified_type": {**_TEXT, "description": "module.QualName of the exception"},
            "details": {"description": "what the exception carried as details (any JSON)"},
        },
        "required": ["type", "message"],
        "additionalProperties": False,
    },
    "SagaSummary": _record(_SAGA_FIELDS),
    "Step": _record(_STEP_FIELDS),
    "Saga": _record(
        {**_SAGA_FIELDS, "steps": {"type": "array", "items": ref("Step")}},
    ),
    "HistoryEntry": _record(
        {
            "at": _TIME,
            "event": _TEXT,
            "from_state": _nullable(_TEXT),
            "to_state": _TEXT,
            "step": _nullable(_TEXT),
            "detail": _nullable({"type": "object"}),
        }
    ),
    "Counts": {
        "description": "Sagas in the store by state: every state, then any other found.",
        "type": "object",
        "properties": {state: _COUNT for state in STATES},
        "required": list(STATES),
        "additionalProperties": _COUNT,
    },
    "ActionAccepted": _record({"saga_id": _TEXT, "result": _TEXT}),
    "Health": {
        "type": "object",
        "properties": {"store": {"type": "string", "enum": ["ok", "unavailable"]}, "error": _TEXT},
        "required": ["store"],
        "additionalProperties": False,
    },
}

SAGA_ID_PARAMETER = {
    "name": "saga_id",
    "in": "path",
    "required": True,
    "description": "The saga's id. One that no saga can have is answered 404 at once.",
    "schema": {"type": "string", "pattern": SAGA_ID_PATTERN.pattern},
}


# One to MAX_PATH_DEPTH dotted names (not blank, no double quote), `=`, any text; no NUL.
_KEY_NAME = '[^=."\\x00]*[^=."\\x00\\s][^=."\\x00]*'
WHERE_PATTERN = f"^{_KEY_NAME}(\\.{_KEY_NAME}){{0,{MAX_PATH_DEPTH - 1}}}=[^\\x00]*$"


def query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


LIST_PARAMETERS = [
    query(
        "state",
        "Only sagas in this state (empty: any).",
        {"type": "string", "enum": ["", *STATES]},
    ),
    query(
        "type",
        "Only sagas of this type (empty: any).",
        {"type": "string", "maxLength": MAX_SAGA_TYPE_LENGTH, "pattern": "^[^\\x00]*$"},
    ),
    query(
        "since",
        "Only sagas created at or after this: a duration ago (30m, 2h, 1d, 1w; any number of "
        "seconds, minutes, hours, days or weeks) or an ISO 8601 date or time (UTC unless it "
        "says otherwise). Empty: any time.",
        {
            "anyOf": [
                {"type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*[smhdw]\\s*$"},
                {"type": "string", "format": "date-time"},
                {"type": "string", "format": "date"},
                {"type": "string", "maxLength": 0},
            ]
        },
    ),
    query(
        "id_prefix",
        "Only sagas whose id starts with this (empty: any).",
        {"type": "string", "pattern": f"^({SAGA_ID_PATTERN.pattern[1:-1]})?$"},
    ),
    {
        **query(
            "where",
            "Only sagas whose input has this value at this key: `order_id=o-4711`, nested keys "
            "with dots (`customer.id=c-1`). A value that reads as a number, true, false or null "
            "matches that value as well as the text. Repeat to combine (all must hold).",
            {
                "type": "array",
                "maxItems": MAX_MATCHES,
                "items": {"type": "string", "pattern": WHERE_PATTERN},
            },
        ),
        "style": "form",
        "explode": True,
    },
    query(
        "limit",
        "At most this many sagas.",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": PAGE_SIZE},
    ),
    query(
        "offset",
        "Skip this many of the newest first.",
        {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
    ),
]


def answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def error(description: str) -> dict[str, Any]:
    return answer(description, ref("Error"))


UNAVAILABLE = error("The saga store could not be reached.")
NO_SAGA = error("No saga with this id: not in the store, or not a possible id.")


QUARANTINE_REASONS = [reason.value for reason in QuarantineReason]
RECORD_ID_PARAMETER = {
    "name": "record_id",
    "in": "path",
    "required": True,
    "description": "The quarantined message's id (letters and digits).",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9]{1,64}$"},
}
NO_RECORD = error("No quarantined message with this id.")
_QUARANTINED_FIELDS: dict[str, Any] = {
    "id": _TEXT,
    "reason": {"type": "string", "enum": QUARANTINE_REASONS},
    "detail": _TEXT,
    "queue": _nullable(_TEXT),
    "task": _nullable(_TEXT),
    "task_id": _nullable(_TEXT),
    "saga_id": _nullable(_TEXT),
    "hostname": _nullable(_TEXT),
    "received_at": _TIME,
    "content_type": _nullable(_TEXT),
    "content_encoding": _nullable(_TEXT),
    "headers": {"type": "object"},
    "properties": {"type": "object"},
    "body_size": _COUNT,
    "truncated": {"type": "boolean"},
    "note": _nullable(_TEXT),
    "replayable": {"type": "boolean"},
}
SCHEMAS["QuarantinedSummary"] = _record(_QUARANTINED_FIELDS)
SCHEMAS["Quarantined"] = {
    "description": "A quarantined message with its body: as text if it is UTF-8, else base64.",
    "type": "object",
    "properties": {**_QUARANTINED_FIELDS, "body_text": _TEXT, "body_base64": _TEXT},
    "required": list(_QUARANTINED_FIELDS),
    "additionalProperties": False,
}
SCHEMAS["QuarantineActionDone"] = _record({"id": _TEXT, "result": _TEXT})
