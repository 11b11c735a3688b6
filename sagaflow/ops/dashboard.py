"""`sagaflow dashboard`: a small read-only web view of sagas, a JSON API and Prometheus metrics.

Flower knows tasks; this knows sagas. Pages: sagas by state with counts and a searchable list,
and one saga's steps as a timeline with links to each task in Flower. The JSON API under /api
returns what the CLI's `--json` prints. Operator actions (cancel, retry) exist only when
enabled, and enabling them requires basic auth.
"""

from __future__ import annotations

import base64
import hmac
import logging
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, redirect, render_template, request, url_for
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from werkzeug.exceptions import Forbidden

from sagaflow.client.saga_client import SagaClient
from sagaflow.config import Settings
from sagaflow.core.definitions import Registry, SagaState, StepStatus, load_definitions
from sagaflow.core.search import key_value
from sagaflow.errors import ConfigurationError, DefinitionError, SagaflowError
from sagaflow.ops import render
from sagaflow.ops.dashboard_api import operate, ordered_counts, register_api_routes, require_actions
from sagaflow.ops.dashboard_http import (
    Dashboard,
    error_response,
    id_prefix_arg,
    list_filters,
    register_error_handlers,
    search_terms,
    where_arg,
)
from sagaflow.ops.dashboard_quarantine import register_quarantine_routes
from sagaflow.ops.explain import STEP_CLASS, next_actions, waiting_on
from sagaflow.ops.metrics import SagaMetrics
from sagaflow.ops.quarantine_metrics import QuarantineMetrics

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8650
MAX_REFRESH_SECONDS = 86400

# Keyed by state; a SagaState is its value, so the templates look states up by their text.
STATE_CLASS = {
    SagaState.REQUESTED: "running",
    SagaState.STARTED: "running",
    SagaState.PENDING: "running",
    SagaState.COMPENSATING: "warn",
    SagaState.COMPLETED: "ok",
    SagaState.FAILED: "bad",
    SagaState.COMPENSATION_FAILED: "alarm",
    SagaState.REJECTED: "muted",
    SagaState.CANCELLED: "warn",
    SagaState.ESCALATED: "alarm",
}


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
    """The dashboard app. Each group of routes registers itself on it with the same Dashboard:
    a new page or API route is one more register function in the list below."""
    if actions and auth is None:
        raise ConfigurationError(
            "operator actions need authentication: set SAGAFLOW_DASHBOARD_AUTH=user:password"
        )
    client = client or SagaClient(settings)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SagaMetrics(client.store, lag=metrics_lag))
    registry.register(QuarantineMetrics(client.store))
    flower = flower_url.rstrip("/") if flower_url else None
    dashboard = Dashboard(client, registry, auth, actions, flower, _definitions(settings))

    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.jinja_env.globals.update(
        state_class=STATE_CLASS,
        states=[s.value for s in SagaState],
        age=render.age,
        duration=render.duration,
        flower=flower,
        actions=actions,
        refresh_seconds=_refresh_seconds,
        moment=render.moment,
        step_class=STEP_CLASS,
    )
    app.jinja_env.filters.update(pretty=render.pretty_json, compact=render.compact_json)
    register_error_handlers(app)
    for register in (
        register_authentication,
        register_ui_routes,
        register_api_routes,
        register_quarantine_routes,
        register_operations_routes,
    ):
        register(app, dashboard)
    return app


def _definitions(settings: Settings) -> Registry:
    """The saga definitions, for each type's key columns: none if they cannot be loaded (the
    dashboard still shows every saga)."""
    if not settings.definitions:
        return Registry()
    try:
        return load_definitions(settings.definitions)
    except DefinitionError as exc:
        logger.warning("dashboard: no key columns, the saga definitions did not load: %s", exc)
        return Registry()


def serve(app: Flask, host: str, port: int, threads: int = 8) -> None:
    """Serve with waitress (a production WSGI server, pure Python)."""
    from waitress import serve as waitress_serve

    waitress_serve(app, host=host, port=port, threads=threads, ident="sagaflow")


def register_authentication(app: Flask, dashboard: Dashboard) -> None:
    auth = dashboard.auth
    if auth is None:
        return

    @app.before_request
    def _authenticate() -> Response | None:
        if request.endpoint in ("healthz", "static"):
            return None
        if _credentials_match(request.headers.get("Authorization"), auth):
            return None
        challenge = {"WWW-Authenticate": 'Basic realm="sagaflow", charset="UTF-8"'}
        return error_response(401, "Unauthorized", "authentication required", challenge)


def register_ui_routes(app: Flask, dashboard: Dashboard) -> None:
    client = dashboard.client

    @app.get("/")
    def index() -> Any:
        # The search box takes a saga id (or its start), or key=value terms on the input.
        text = (request.args.get("q") or "").strip()
        terms = search_terms(text) if "=" in text else []
        query = None if terms else id_prefix_arg(request.args, "q")
        if query and client.store.load(query) is not None:
            return redirect(url_for("saga_page", saga_id=query))
        filters = list_filters(request.args)
        filters["where"] = [*filters["where"], *where_arg(terms)]
        sagas = client.list_sagas(**filters, id_prefix=query)
        return render_template(
            "index.html",
            sagas=sagas,
            keys=dashboard.definitions.keys_of_all(saga.saga_type for saga in sagas),
            key_value=key_value,
            counts=ordered_counts(client.store.count_by_state()),
            args=request.args,
            query=text,
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
            waiting=waiting_on(saga),
            next_steps=next_actions(saga),
        )

    @app.post("/sagas/<saga_id>/<any(cancel, retry):action>")
    def saga_action(saga_id: str, action: str) -> Any:
        require_actions(dashboard)
        _same_origin()
        message = operate(dashboard, saga_id, action)
        return redirect(url_for("saga_page", saga_id=saga_id, message=message), 303)


def register_operations_routes(app: Flask, dashboard: Dashboard) -> None:
    client, registry = dashboard.client, dashboard.registry

    @app.get("/metrics")
    def metrics() -> Response:
        # content_type, not mimetype: Flask would append a second charset to Prometheus' own
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> Any:
        try:
            client.store.ping()
        except SagaflowError as exc:
            return jsonify({"store": "unavailable", "error": str(exc)}), 503
        return jsonify({"store": "ok"})


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
    try:
        netloc = urlsplit(source).netloc if source else None
    except ValueError:  # e.g. an unclosed [IPv6 bracket
        netloc = None
    if netloc != request.host:
        raise Forbidden("cross-site or origin-less form post refused")


def _list_args(args: Any) -> dict[str, Any]:
    """The list page's own arguments, for its paging links (url_for takes some names itself)."""
    return {k: args[k] for k in ("q", "state", "type", "since", "limit") if args.get(k)}


def _refresh_seconds() -> int | None:
    """The list's ?refresh=N, if it is a sensible number of seconds."""
    text = request.args.get("refresh", "")
    if not text.isascii() or not text.isdigit() or len(text) > 6:
        return None
    seconds = int(text)
    return seconds if 0 < seconds <= MAX_REFRESH_SECONDS else None


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
