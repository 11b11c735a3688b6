"""The dashboard's JSON API under /api: what the CLI's `--json` prints, and operator actions.

Described by /api/openapi.json (sagaflow.ops.dashboard_openapi); errors are answered by
sagaflow.ops.dashboard_http's handlers as `{"error": {"type", "message"}}`.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request
from werkzeug.exceptions import Forbidden, UnsupportedMediaType

from sagaflow.core.definitions import SagaState
from sagaflow.core.vocabulary import OperatorAction
from sagaflow.errors import BadQuery
from sagaflow.ops import render
from sagaflow.ops.dashboard_http import Dashboard, id_prefix_arg, list_filters
from sagaflow.ops.dashboard_openapi import openapi_document

# The query arguments each API route takes; the others take none. Anything else is refused
# rather than ignored, so that a misspelt filter is not a list of every saga.
QUERY_ARGUMENTS = {
    "api_list": ("state", "type", "since", "id_prefix", "where", "limit", "offset"),
    "api_quarantine_list": ("reason", "limit", "offset"),
}


def register_api_routes(app: Flask, dashboard: Dashboard) -> None:
    client = dashboard.client
    document = openapi_document(auth=dashboard.auth is not None, actions=dashboard.actions)

    @app.before_request
    def _known_arguments() -> None:
        if request.endpoint is None or not request.path.startswith("/api/"):
            return
        known = QUERY_ARGUMENTS.get(request.endpoint, ())
        unknown = sorted(set(request.args) - set(known))
        if unknown:
            takes = f"it takes {', '.join(known)}" if known else "it takes none"
            raise BadQuery(
                f"unknown query argument {unknown[0]!r:.40} for {request.path:.80}: {takes}"
            )

    @app.get("/api/sagas")
    def api_list() -> Any:
        filters = list_filters(request.args)
        sagas = client.list_sagas(**filters, id_prefix=id_prefix_arg(request.args, "id_prefix"))
        return jsonify([render.saga_json(s, with_steps=False) for s in sagas])

    @app.get("/api/sagas/<saga_id>")
    def api_status(saga_id: str) -> Any:
        return jsonify(render.saga_json(client.get(saga_id)))

    @app.get("/api/sagas/<saga_id>/history")
    def api_history(saga_id: str) -> Any:
        return jsonify([render.history_json(r) for r in client.history(saga_id)])

    @app.get("/api/counts")
    def api_counts() -> Any:
        return jsonify(ordered_counts(client.store.count_by_state()))

    @app.post("/api/sagas/<saga_id>/<any(cancel, retry):action>")
    def api_action(saga_id: str, action: str) -> Any:
        require_actions(dashboard)
        if not request.is_json:  # a cross-site form cannot send JSON without a CORS preflight
            raise UnsupportedMediaType("send Content-Type: application/json")
        return jsonify({"saga_id": saga_id, "result": operate(dashboard, saga_id, action)}), 202

    @app.get("/api/openapi.json")
    def api_openapi() -> Any:
        return jsonify(document)


def require_actions(dashboard: Dashboard) -> None:
    if not dashboard.actions:
        raise Forbidden("operator actions are disabled (start with --enable-actions)")


def operate(dashboard: Dashboard, saga_id: str, action: str) -> str:
    """`action` from the route: cancel or retry."""
    if OperatorAction(action) is OperatorAction.CANCEL:
        dashboard.client.cancel(saga_id, reason="cancelled from the dashboard")
        return "cancel requested"
    dashboard.client.retry(saga_id)
    return "compensation retried"


def ordered_counts(counts: dict[str, int]) -> dict[str, int]:
    ordered = {s.value: counts.get(s.value, 0) for s in SagaState}
    ordered.update({k: v for k, v in counts.items() if k not in ordered})
    return ordered
