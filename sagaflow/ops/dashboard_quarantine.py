"""The quarantine in the dashboard: a page and an API to read the messages workers refused, and,
with operator actions enabled, to drop or replay them (as `sagaflow quarantine` does)."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import NotFound, UnsupportedMediaType

from sagaflow.core.quarantine import QuarantinedMessage, QuarantineReason
from sagaflow.errors import BadQuery
from sagaflow.ops import render
from sagaflow.ops.dashboard_api import require_actions
from sagaflow.ops.dashboard_http import MAX_OFFSET, Dashboard, int_arg
from sagaflow.ops.quarantine_admin import QuarantineAdmin

REASONS = tuple(reason.value for reason in QuarantineReason)
PAGE_SIZE = 50
MAX_LIMIT = 1000
BODY_PREVIEW_CHARS = 20_000


def register_quarantine_routes(app: Flask, dashboard: Dashboard) -> None:
    admin = QuarantineAdmin(dashboard.client)

    def listed() -> tuple[list[QuarantinedMessage], QuarantineReason | None, int, int]:
        reason_text = request.args.get("reason") or None
        if reason_text is not None and reason_text not in REASONS:
            raise BadQuery(f"unknown reason {reason_text!r:.80}: use one of {', '.join(REASONS)}")
        reason = QuarantineReason(reason_text) if reason_text else None
        limit = int_arg(request.args, "limit", PAGE_SIZE, 1, MAX_LIMIT)
        offset = int_arg(request.args, "offset", 0, 0, MAX_OFFSET)
        return admin.newest(limit, offset, reason), reason, limit, offset

    def found(record_id: str) -> QuarantinedMessage:
        if not record_id.isascii() or not record_id.isalnum() or len(record_id) > 64:
            raise NotFound(f"no quarantined message {record_id[:64]!r}")
        return admin.get(record_id)

    @app.get("/quarantine")
    def quarantine_page() -> Any:
        records, reason, limit, offset = listed()
        return render_template(
            "quarantine.html",
            records=records,
            counts=admin.counts(),
            reason=reason.value if reason else "",
            limit=limit,
            offset=offset,
        )

    @app.get("/quarantine/<record_id>")
    def quarantined_page(record_id: str) -> Any:
        record = found(record_id)
        text = render.body_text(record.body)
        return render_template(
            "quarantined.html",
            record=record,
            body=(text if text is not None else record.body.hex())[:BODY_PREVIEW_CHARS],
            body_is_text=text is not None,
        )

    @app.get("/api/quarantine")
    def api_quarantine_list() -> Any:
        records, _, _, _ = listed()
        return jsonify([render.quarantined_json(r, with_body=False) for r in records])

    @app.get("/api/quarantine/<record_id>")
    def api_quarantined(record_id: str) -> Any:
        return jsonify(render.quarantined_json(found(record_id)))

    @app.post("/api/quarantine/<record_id>/<any(drop, replay):action>")
    def api_quarantine_action(record_id: str, action: str) -> Any:
        require_actions(dashboard)
        if not request.is_json:  # a cross-site form cannot send JSON without a CORS preflight
            raise UnsupportedMediaType("send Content-Type: application/json")
        record = found(record_id)
        if action == "drop":
            admin.drop([record.id])
            return jsonify({"id": record.id, "result": "dropped"})
        options = request.get_json(silent=True)
        options = options if isinstance(options, dict) else {}
        queue = options.get("queue")
        force = options.get("force") is True
        if queue is not None and not (isinstance(queue, str) and 0 < len(queue) <= 200):
            raise BadQuery("queue must be a queue name")
        _, sent_to = admin.replay(record.id, force=force, queue=queue)
        return jsonify({"id": record.id, "result": f"replayed onto {sent_to}"}), 202
