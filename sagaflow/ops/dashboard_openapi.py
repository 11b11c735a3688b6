"""The OpenAPI 3.1 description of the dashboard's API, served at /api/openapi.json.

Written out by hand rather than derived, so that it says what a client may rely on; the tests
check it against every route of the app and fuzz the app with it
(tests/acceptance/test_dashboard_fuzz.py). The paths are here; the schemas, parameters and
common answers they refer to are in sagaflow.ops.dashboard_openapi_parts.
"""

from __future__ import annotations

from typing import Any

from sagaflow.ops.dashboard_http import MAX_LIMIT, MAX_OFFSET
from sagaflow.ops.dashboard_openapi_parts import (
    JSON,
    LIST_PARAMETERS,
    NO_RECORD,
    NO_SAGA,
    QUARANTINE_REASONS,
    RECORD_ID_PARAMETER,
    SAGA_ID_PARAMETER,
    SCHEMAS,
    UNAVAILABLE,
    answer,
    error,
    query,
    ref,
)


def _action(verb: str, summary: str, conflict: str) -> dict[str, Any]:
    return {
        "post": {
            "operationId": f"{verb}_saga",
            "summary": summary,
            "tags": ["operator actions"],
            "parameters": [SAGA_ID_PARAMETER],
            "requestBody": {
                "required": True,
                "description": "Any JSON, ignored: the JSON content type is what a cross-site "
                "form cannot send.",
                "content": {JSON: {"schema": {}}},
            },
            "responses": {
                "202": answer("Sent to the orchestrator.", ref("ActionAccepted")),
                "403": error("Operator actions are disabled (start with --enable-actions)."),
                "404": NO_SAGA,
                "409": error(conflict),
                "415": error("The request was not sent as application/json."),
                "503": error("The saga store or the broker could not be reached."),
            },
        }
    }


def _quarantine_action(verb: str, summary: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "operationId": f"{verb}_quarantined",
            "summary": summary,
            "tags": ["quarantine"],
            "parameters": [RECORD_ID_PARAMETER],
            "requestBody": {
                "required": True,
                "description": "JSON (a cross-site form cannot send it).",
                "content": {JSON: {"schema": body}},
            },
            "responses": {
                "200" if verb == "drop" else "202": answer("Done.", ref("QuarantineActionDone")),
                "400": error("An option that cannot be used."),
                "403": error("Operator actions are disabled (start with --enable-actions)."),
                "404": NO_RECORD,
                "409": error("The message cannot be replayed (cut, or its saga was told)."),
                "415": error("The request was not sent as application/json."),
                "503": error("The saga store or the broker could not be reached."),
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
                    query(
                        "reason",
                        "Only messages refused for this (empty: any).",
                        {"type": "string", "enum": ["", *QUARANTINE_REASONS]},
                    ),
                    query(
                        "limit",
                        "At most this many.",
                        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
                    ),
                    query(
                        "offset",
                        "Skip this many of the newest first.",
                        {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
                    ),
                ],
                "responses": {
                    "200": answer(
                        "The quarantined messages.",
                        {"type": "array", "items": ref("QuarantinedSummary")},
                    ),
                    "400": error("A filter or paging argument that cannot be used."),
                    "503": UNAVAILABLE,
                },
            }
        },
        "/api/quarantine/{record_id}": {
            "get": {
                "operationId": "get_quarantined",
                "summary": "One quarantined message with its headers and body "
                "(`sagaflow quarantine show --json`).",
                "tags": ["quarantine"],
                "parameters": [RECORD_ID_PARAMETER],
                "responses": {
                    "200": answer("The message.", ref("Quarantined")),
                    "404": NO_RECORD,
                    "503": UNAVAILABLE,
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
    return {**_quarantine_paths(), **_saga_paths(), **_operations_paths()}


_SAGA_OPERATIONS = ("get_saga", "get_saga_history", "cancel_saga", "retry_saga")


def _first_saga_links() -> dict[str, Any]:
    """From a listing to what can be done with the first saga listed."""
    return {
        operation: {
            "operationId": operation,
            "parameters": {"saga_id": "$response.body#/0/saga_id"},
            "description": "The first saga listed.",
        }
        for operation in _SAGA_OPERATIONS
    }


def _saga_paths() -> dict[str, Any]:
    return {
        "/api/sagas": {
            "get": {
                "operationId": "list_sagas",
                "summary": "Sagas, newest first, without their steps (what `sagaflow list "
                "--json` prints).",
                "tags": ["sagas"],
                "parameters": LIST_PARAMETERS,
                "responses": {
                    "200": {
                        **answer(
                            "The sagas that match.",
                            {"type": "array", "items": ref("SagaSummary")},
                        ),
                        "links": _first_saga_links(),
                    },
                    "400": error(
                        "A filter or paging argument that cannot be used, or one not listed."
                    ),
                    "503": UNAVAILABLE,
                },
            }
        },
        "/api/sagas/{saga_id}": {
            "get": {
                "operationId": "get_saga",
                "summary": "One saga with its steps (what `sagaflow status --json` prints).",
                "tags": ["sagas"],
                "parameters": [SAGA_ID_PARAMETER],
                "responses": {
                    "200": answer("The saga.", ref("Saga")),
                    "404": NO_SAGA,
                    "503": UNAVAILABLE,
                },
            }
        },
        "/api/sagas/{saga_id}/history": {
            "get": {
                "operationId": "get_saga_history",
                "summary": "What happened to one saga, oldest first (`sagaflow history --json`).",
                "tags": ["sagas"],
                "parameters": [SAGA_ID_PARAMETER],
                "responses": {
                    "200": answer(
                        "The saga's history.", {"type": "array", "items": ref("HistoryEntry")}
                    ),
                    "404": NO_SAGA,
                    "503": UNAVAILABLE,
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
                    "200": answer("Counts by state.", ref("Counts")),
                    "503": UNAVAILABLE,
                },
            }
        },
    }


def _operations_paths() -> dict[str, Any]:
    return {
        "/api/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This description.",
                "tags": ["operations"],
                "responses": {"200": answer("The OpenAPI document.", {"type": "object"})},
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
                    "200": answer("The store answered.", ref("Health")),
                    "503": answer("The store could not be reached.", ref("Health")),
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
                operation["responses"].setdefault("400", error("A query argument not listed."))
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
        refused = error("Credentials missing or wrong.")
        for path in paths.values():
            for operation in path.values():
                if operation.get("security") != []:
                    operation["responses"]["401"] = refused
    return document
