"""`sagaflow dashboard`: a small read-only web view of sagas, a JSON API and Prometheus metrics.

Flower knows tasks; this knows sagas. Pages: sagas by state with counts and a searchable list,
and one saga's steps as a timeline with links to each task in Flower. The JSON API under /api
returns what the CLI's `--json` prints. Operator actions (cancel, retry) exist only when
enabled, and enabling them requires basic auth.
"""

from __future__ import annotations

import base64
import hmac
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, abort, jsonify, redirect, render_template, request, url_for
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from sagaflow import render
from sagaflow.client import InvalidOperation, SagaClient, parse_since
from sagaflow.config import Settings
from sagaflow.definitions import SagaState, StepStatus
from sagaflow.errors import ConfigurationError, SagaflowError, SagaNotFound, StoreUnavailable
from sagaflow.metrics import SagaMetrics

DEFAULT_PORT = 8650
PAGE_SIZE = 50

STATE_CLASS = {
    "requested": "running",
    "started": "running",
    "pending": "running",
    "compensating": "warn",
    "completed": "ok",
    "failed": "bad",
    "compensation_failed": "alarm",
    "rejected": "muted",
    "cancelled": "warn",
    "escalated": "alarm",
}


class BadQuery(ValueError):
    """A filter or paging argument that cannot be used: answered with 400 and the reason."""


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """`user:password` (SAGAFLOW_DASHBOARD_AUTH) -> (user, password)."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ConfigurationError("dashboard auth must be given as user:password")
    return user, password


def create_dashboard(
    settings: Settings,
    *,
    client: SagaClient | None = None,
    flower_url: str | None = None,
    auth: tuple[str, str] | None = None,
    actions: bool = False,
    metrics_lag: float = 5.0,
) -> Flask:
    if actions and auth is None:
        raise ConfigurationError(
            "operator actions need authentication: set SAGAFLOW_DASHBOARD_AUTH=user:password"
        )
    client = client or SagaClient(settings)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SagaMetrics(client.store, lag=metrics_lag))
    flower = flower_url.rstrip("/") if flower_url else None

    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.jinja_env.globals.update(
        state_class=STATE_CLASS,
        states=[s.value for s in SagaState],
        age=render.age,
        duration=render.duration,
        flower=flower,
        actions=actions,
    )

    @app.before_request
    def _authenticate() -> Response | None:
        if auth is None or request.endpoint in ("healthz", "static"):
            return None
        if _credentials_match(request.headers.get("Authorization"), auth):
            return None
        return Response(
            "authentication required\n",
            401,
            {"WWW-Authenticate": 'Basic realm="sagaflow", charset="UTF-8"'},
        )

    @app.errorhandler(SagaNotFound)
    def _not_found(exc: SagaNotFound) -> Any:
        return _error(str(exc), 404)

    @app.errorhandler(StoreUnavailable)
    def _unavailable(exc: StoreUnavailable) -> Any:
        return _error(str(exc), 503)

    @app.errorhandler(InvalidOperation)
    def _invalid(exc: InvalidOperation) -> Any:
        return _error(str(exc), 409)

    @app.errorhandler(BadQuery)
    def _bad_request(exc: BadQuery) -> Any:
        return _error(str(exc), 400)

    # -- pages ---------------------------------------------------------------------------------

    @app.get("/")
    def index() -> Any:
        query = request.args.get("q", "").strip()
        if query and client.store.load(query) is not None:
            return redirect(url_for("saga_page", saga_id=query))
        filters = _filters(request.args)
        sagas = client.list_sagas(**filters, id_prefix=query or None)
        return render_template(
            "index.html",
            sagas=sagas,
            counts=_ordered_counts(client.store.count_by_state()),
            args=request.args,
            query=query,
            offset=filters["offset"],
            limit=filters["limit"],
            now=datetime.now(timezone.utc),
            page_url=lambda offset: url_for("index", **_list_args(request.args), offset=offset),
        )

    @app.get("/sagas/<saga_id>")
    def saga_page(saga_id: str) -> Any:
        saga = client.get(saga_id)
        rows = client.history(saga_id)
        return render_template(
            "saga.html",
            saga=saga,
            history=rows,
            timeline=_timeline(saga),
            message=request.args.get("message"),
            now=datetime.now(timezone.utc),
            can_cancel=actions and not saga.state.is_terminal,
            can_retry=actions and saga.state is SagaState.COMPENSATION_FAILED,
        )

    @app.post("/sagas/<saga_id>/<action>")
    def saga_action(saga_id: str, action: str) -> Any:
        _require_action(action)
        _same_origin()
        message = _operate(client, saga_id, action)
        return redirect(url_for("saga_page", saga_id=saga_id, message=message), 303)

    # -- JSON API: the CLI's --json output -----------------------------------------------------

    @app.get("/api/sagas")
    def api_list() -> Any:
        filters = _filters(request.args)
        prefix = request.args.get("id_prefix") or None
        sagas = client.list_sagas(**filters, id_prefix=prefix)
        return jsonify([render.saga_json(s, with_steps=False) for s in sagas])

    @app.get("/api/sagas/<saga_id>")
    def api_status(saga_id: str) -> Any:
        return jsonify(render.saga_json(client.get(saga_id)))

    @app.get("/api/sagas/<saga_id>/history")
    def api_history(saga_id: str) -> Any:
        return jsonify([render.history_json(r) for r in client.history(saga_id)])

    @app.get("/api/counts")
    def api_counts() -> Any:
        return jsonify(_ordered_counts(client.store.count_by_state()))

    @app.post("/api/sagas/<saga_id>/<action>")
    def api_action(saga_id: str, action: str) -> Any:
        _require_action(action)
        if not request.is_json:  # a cross-site form cannot send JSON without a CORS preflight
            return _error("send Content-Type: application/json", 415)
        return jsonify({"saga_id": saga_id, "result": _operate(client, saga_id, action)}), 202

    # -- operations ----------------------------------------------------------------------------

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> Any:
        try:
            client.store.ping()
        except SagaflowError as exc:
            return jsonify({"store": "unavailable", "error": str(exc)}), 503
        return jsonify({"store": "ok"})

    def _require_action(action: str) -> None:
        if action not in ("cancel", "retry"):
            abort(404)
        if not actions:
            abort(_error("operator actions are disabled (start with --enable-actions)", 403))

    return app


def serve(app: Flask, host: str, port: int, threads: int = 8) -> None:
    """Serve with waitress (a production WSGI server, pure Python)."""
    from waitress import serve as waitress_serve

    waitress_serve(app, host=host, port=port, threads=threads, ident="sagaflow")


# -- helpers ----------------------------------------------------------------------------------


def _credentials_match(header: str | None, auth: tuple[str, str]) -> bool:
    if not header or not header.startswith("Basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    # compare both in constant time, whatever the first comparison said
    ok_user = hmac.compare_digest(user.encode(), auth[0].encode())
    ok_password = hmac.compare_digest(password.encode(), auth[1].encode())
    return ok_user and ok_password


def _same_origin() -> None:
    """Refuse a form posted from another site: the browser sends basic-auth credentials along."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or urlsplit(source).netloc != request.host:
        abort(_error("cross-site or origin-less form post refused", 403))


def _operate(client: SagaClient, saga_id: str, action: str) -> str:
    if action == "cancel":
        client.cancel(saga_id, reason="cancelled from the dashboard")
        return "cancel requested"
    client.retry(saga_id)
    return "compensation retried"


def _error(message: str, status: int) -> Response:
    wants_json = request.path.startswith("/api/") or request.accept_mimetypes.best == (
        "application/json"
    )
    if wants_json:
        response = jsonify({"error": message})
    else:
        response = Response(render_template("error.html", message=message, status=status))
    response.status_code = status
    return response


def _filters(args: Any) -> dict[str, Any]:
    state = args.get("state") or None
    if state is not None and state not in {s.value for s in SagaState}:
        known = ", ".join(s.value for s in SagaState)
        raise BadQuery(f"unknown state {state!r}: use one of {known}")
    since_text = args.get("since") or None
    try:
        since = parse_since(since_text) if since_text else None
    except ValueError as exc:
        raise BadQuery(str(exc)) from None
    limit = _int_arg(args, "limit", PAGE_SIZE, 1, 1000)
    return {
        "state": state,
        "saga_type": args.get("type") or None,
        "since": since,
        "limit": limit,
        "offset": _int_arg(args, "offset", 0, 0, 10**9),
    }


def _list_args(args: Any) -> dict[str, Any]:
    """The list page's own arguments, for its paging links (url_for takes some names itself)."""
    return {k: args[k] for k in ("q", "state", "type", "since", "limit") if args.get(k)}


def _int_arg(args: Any, name: str, default: int, low: int, high: int) -> int:
    text = args.get(name)
    if text in (None, ""):
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadQuery(f"{name} must be an integer, got {text!r}") from None
    if not low <= value <= high:
        raise BadQuery(f"{name} must be between {low} and {high}")
    return value


def _ordered_counts(counts: dict[str, int]) -> dict[str, int]:
    ordered = {s.value: counts.get(s.value, 0) for s in SagaState}
    ordered.update({k: v for k, v in counts.items() if k not in ordered})
    return ordered


def _timeline(saga: Any) -> list[dict[str, Any]]:
    """Bars for each step's action and compensation, as percentages of the saga's span."""
    begin = saga.created_at
    end = saga.finished_at or datetime.now(timezone.utc)
    moments: list[datetime] = [m for m in (begin, end) if m is not None]
    for step in saga.steps:
        moments += [
            m
            for m in (
                step.started_at,
                step.finished_at,
                step.compensation_started_at,
                step.compensated_at,
            )
            if m is not None
        ]
    if not moments:
        return []
    first, last = min(moments), max(moments)
    span = max((last - first).total_seconds(), 1e-3)

    def bar(start: datetime | None, stop: datetime | None, kind: str) -> dict[str, Any] | None:
        if start is None:
            return None
        stop = stop or last
        left = (start - first).total_seconds() / span * 100
        width = max((stop - start).total_seconds() / span * 100, 0.6)
        return {"left": round(left, 2), "width": round(min(width, 100 - left), 2), "kind": kind}

    rows = []
    for step in saga.steps:
        action_kind = {
            StepStatus.EXECUTING: "running",
            StepStatus.VERIFYING: "running",
            StepStatus.FAILED: "bad",
            StepStatus.WAITING_RETRY: "bad",
            StepStatus.OUTCOME_UNKNOWN: "bad",
        }.get(step.status, "ok")
        compensation_kind = {
            StepStatus.COMPENSATING: "running",
            StepStatus.COMPENSATION_FAILED: "bad",
        }.get(step.status, "warn")
        rows.append(
            {
                "step": step,
                "action": bar(step.started_at, step.finished_at, action_kind),
                "compensation": bar(
                    step.compensation_started_at, step.compensated_at, compensation_kind
                ),
            }
        )
    return rows
