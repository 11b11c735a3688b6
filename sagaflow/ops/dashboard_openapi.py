"""The OpenAPI 3.1 description of the dashboard's API, served at /api/openapi.json.

Written out by hand rather than derived, so that it says what a client may rely on; the tests
check it against every route of the app and fuzz the app with it
(tests/acceptance/test_dashboard_fuzz.py).
"""

from __future__ import annotations

from typing import Any

from sagaflow.client.saga_client import MAX_SAGA_TYPE_LENGTH
from sagaflow.core.definitions import StepStatus
from sagaflow.core.protocol import SAGA_ID_PATTERN
from sagaflow.core.quarantine import QuarantineReason
from sagaflow.ops.dashboard_http import MAX_LIMIT, MAX_OFFSET, PAGE_SIZE, STATES

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
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
    "error": _nullable(_ref("Failure")),
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
    "error": _nullable(_ref("Failure")),
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
        {**_SAGA_FIELDS, "steps": {"type": "array", "items": _ref("Step")}},
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

_SAGA_ID_PARAMETER = {
    "name": "saga_id",
    "in": "path",
    "required": True,
    "description": "The saga's id. One that no saga can have is answered 404 at once.",
    "schema": {"type": "string", "pattern": SAGA_ID_PATTERN.pattern},
}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_LIST_PARAMETERS = [
    _query(
        "state",
        "Only sagas in this state (empty: any).",
        {"type": "string", "enum": ["", *STATES]},
    ),
    _query(
        "type",
        "Only sagas of this type (empty: any).",
        {"type": "string", "maxLength": MAX_SAGA_TYPE_LENGTH, "pattern": "^[^\\x00]*$"},
    ),
    _query(
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
    _query(
        "id_prefix",
        "Only sagas whose id starts with this (empty: any).",
        {"type": "string", "pattern": f"^({SAGA_ID_PATTERN.pattern[1:-1]})?$"},
    ),
    _query(
        "limit",
        "At most this many sagas.",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": PAGE_SIZE},
    ),
    _query(
        "offset",
        "Skip this many of the newest first.",
        {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
    ),
]


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(description, _ref("Error"))


_UNAVAILABLE = _error("The saga store could not be reached.")
_NO_SAGA = _error("No saga with this id: not in the store, or not a possible id.")


def _action(verb: str, summary: str, conflict: str) -> dict[str, Any]:
    return {
        "post": {
            "operationId": f"{verb}_saga",
            "summary": summary,
            "tags": ["operator actions"],
            "parameters": [_SAGA_ID_PARAMETER],
            "requestBody": {
                "required": True,
                "description": "Any JSON, ignored: the JSON content type is what a cross-site "
                "form cannot send.",
                "content": {JSON: {"schema": {}}},
            },
            "responses": {
                "202": _json("Sent to the orchestrator.", _ref("ActionAccepted")),
                "403": _error("Operator actions are disabled (start with --enable-actions)."),
                "404": _NO_SAGA,
                "409": _error(conflict),
                "415": _error("The request was not sent as application/json."),
                "503": _error("The saga store or the broker could not be reached."),
            },
        }
    }


_SAGA_OPERATIONS = ("get_saga", "get_saga_history", "cancel_saga", "retry_saga")


_QUARANTINE_REASONS = [reason.value for reason in QuarantineReason]
_RECORD_ID_PARAMETER = {
    "name": "record_id",
    "in": "path",
    "required": True,
    "description": "The quarantined message's id (letters and digits).",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9]{1,64}$"},
}
_NO_RECORD = _error("No quarantined message with this id.")
_QUARANTINED_FIELDS: dict[str, Any] = {
    "id": _TEXT,
    "reason": {"type": "string", "enum": _QUARANTINE_REASONS},
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


def _quarantine_action(verb: str, summary: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "operationId": f"{verb}_quarantined",
            "summary": summary,
            "tags": ["quarantine"],
            "parameters": [_RECORD_ID_PARAMETER],
            "requestBody": {
                "required": True,
                "description": "JSON (a cross-site form cannot send it).",
                "content": {JSON: {"schema": body}},
            },
            "responses": {
                "200" if verb == "drop" else "202": _json("Done.", _ref("QuarantineActionDone")),
                "400": _error("An option that cannot be used."),
                "403": _error("Operator actions are disabled (start with --enable-actions)."),
                "404": _NO_RECORD,
                "409": _error("The message cannot be replayed (cut, or its saga was told)."),
                "415": _error("The request was not sent as application/json."),
                "503": _error("The saga store or the broker could not be reached."),
            },
        }
    }


def _quarantine_paths() -> dict[str, Any]:
    return {
        "/api/quarantine": {
            "get": {
                "operationId": "list_quarantined",
                "summary": "Messages workers refused, newest first, without their bodies "
                "(`sagaflow quarantine list --json`).",
                "tags": ["quarantine"],
                "parameters": [
                    _query(
                        "reason",
                        "Only messages refused for this (empty: any).",
                        {"type": "string", "enum": ["", *_QUARANTINE_REASONS]},
                    ),
                    _query(
                        "limit",
                        "At most this many.",
                        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
                    ),
                    _query(
                        "offset",
                        "Skip this many of the newest first.",
                        {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
                    ),
                ],
                "responses": {
                    "200": _json(
                        "The quarantined messages.",
                        {"type": "array", "items": _ref("QuarantinedSummary")},
                    ),
                    "400": _error("A filter or paging argument that cannot be used."),
                    "503": _UNAVAILABLE,
                },
            }
        },
        "/api/quarantine/{record_id}": {
            "get": {
                "operationId": "get_quarantined",
                "summary": "One quarantined message with its headers and body "
                "(`sagaflow quarantine show --json`).",
                "tags": ["quarantine"],
                "parameters": [_RECORD_ID_PARAMETER],
                "responses": {
                    "200": _json("The message.", _ref("Quarantined")),
                    "404": _NO_RECORD,
                    "503": _UNAVAILABLE,
                },
            }
        },
        "/api/quarantine/{record_id}/drop": _quarantine_action(
            "drop", "Forget a quarantined message for good.", {}
        ),
        "/api/quarantine/{record_id}/replay": _quarantine_action(
            "replay",
            "Put a quarantined message back on its queue (or on `queue`), byte for byte.",
            {
                "type": "object",
                "properties": {
                    "queue": {"type": "string", "minLength": 1, "maxLength": 200},
                    "force": {"type": "boolean"},
                },
            },
        ),
    }


def _paths() -> dict[str, Any]:
    return {
        **_quarantine_paths(),
        "/api/sagas": {
            "get": {
                "operationId": "list_sagas",
                "summary": "Sagas, newest first, without their steps (what `sagaflow list "
                "--json` prints).",
                "tags": ["sagas"],
                "parameters": _LIST_PARAMETERS,
                "responses": {
                    "200": {
                        **_json(
                            "The sagas that match.",
                            {"type": "array", "items": _ref("SagaSummary")},
                        ),
                        "links": {
                            operation: {
                                "operationId": operation,
                                "parameters": {"saga_id": "$response.body#/0/saga_id"},
                                "description": "The first saga listed.",
                            }
                            for operation in _SAGA_OPERATIONS
                        },
                    },
                    "400": _error(
                        "A filter or paging argument that cannot be used, or one not listed."
                    ),
                    "503": _UNAVAILABLE,
                },
            }
        },
        "/api/sagas/{saga_id}": {
            "get": {
                "operationId": "get_saga",
                "summary": "One saga with its steps (what `sagaflow status --json` prints).",
                "tags": ["sagas"],
                "parameters": [_SAGA_ID_PARAMETER],
                "responses": {
                    "200": _json("The saga.", _ref("Saga")),
                    "404": _NO_SAGA,
                    "503": _UNAVAILABLE,
                },
            }
        },
        "/api/sagas/{saga_id}/history": {
            "get": {
                "operationId": "get_saga_history",
                "summary": "What happened to one saga, oldest first (`sagaflow history --json`).",
                "tags": ["sagas"],
                "parameters": [_SAGA_ID_PARAMETER],
                "responses": {
                    "200": _json(
                        "The saga's history.", {"type": "array", "items": _ref("HistoryEntry")}
                    ),
                    "404": _NO_SAGA,
                    "503": _UNAVAILABLE,
                },
            }
        },
        "/api/sagas/{saga_id}/cancel": _action(
            "cancel",
            "Cancel a running saga: what completed is compensated.",
            "The saga cannot be cancelled in its state.",
        ),
        "/api/sagas/{saga_id}/retry": _action(
            "retry",
            "Resume a saga stopped in compensation_failed at the compensation that failed.",
            "The saga is not stopped in compensation_failed.",
        ),
        "/api/counts": {
            "get": {
                "operationId": "count_sagas",
                "summary": "How many sagas are in each state.",
                "tags": ["sagas"],
                "responses": {
                    "200": _json("Counts by state.", _ref("Counts")),
                    "503": _UNAVAILABLE,
                },
            }
        },
        "/api/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This description.",
                "tags": ["operations"],
                "responses": {"200": _json("The OpenAPI document.", {"type": "object"})},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Saga metrics in Prometheus' text format.",
                "tags": ["operations"],
                "responses": {
                    "200": {
                        "description": "The metrics (sagaflow_store_up is 0 when the store "
                        "could not be read).",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Whether the saga store answers (never behind authentication).",
                "tags": ["operations"],
                "security": [],
                "responses": {
                    "200": _json("The store answered.", _ref("Health")),
                    "503": _json("The store could not be reached.", _ref("Health")),
                },
            }
        },
    }


def openapi_document(*, auth: bool, actions: bool) -> dict[str, Any]:
    """The description of one dashboard: with basic auth on every path but /healthz when it is
    configured, and saying whether operator actions are enabled."""
    paths = _paths()
    for path, operations in paths.items():
        if path.startswith("/api/"):  # the API refuses query arguments it does not take
            for operation in operations.values():
                operation["responses"].setdefault("400", _error("A query argument not listed."))
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "sagaflow dashboard",
            "version": "1",
            "description": "Sagas as the store holds them, their history and counts; operator "
            f"actions are {'enabled' if actions else 'disabled (403)'} on this dashboard. "
            'Every error is JSON: {"error": {"type": ..., "message": ...}}.',
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }
    if auth:
        document["components"]["securitySchemes"] = {"basic": {"type": "http", "scheme": "basic"}}
        document["security"] = [{"basic": []}]
        refused = _error("Credentials missing or wrong.")
        for path in paths.values():
            for operation in path.values():
                if operation.get("security") != []:
                    operation["responses"]["401"] = refused
    return document
