"""What every dashboard route shares: the app's context, its error answers and its query arguments.

Every error is answered in the caller's language: JSON `{"error": {"type", "message"}}` under
/api/, on /metrics and /healthz (or when JSON is what the client accepts best), an HTML page
elsewhere. Query arguments
are checked here, before anything reaches the store: PostgreSQL's driver fails on text that
SQLite takes (a NUL character), so what the store could not search for is a 400, never a 500.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, jsonify, render_template, request
from prometheus_client import CollectorRegistry
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException

from sagaflow.client.saga_client import BrokerUnavailable, InvalidOperation, SagaClient
from sagaflow.client.validation import MAX_SAGA_TYPE_LENGTH, parse_since
from sagaflow.core.definitions import Registry, SagaState
from sagaflow.core.protocol import SAGA_ID_PATTERN
from sagaflow.core.search import FieldMatch, field_matches
from sagaflow.errors import (
    BadQuery,
    InvalidSagaInput,
    QuarantinedMessageNotFound,
    SagaflowError,
    SagaNotFound,
    StoreUnavailable,
)

PAGE_SIZE = 50
MAX_LIMIT = 1000
MAX_OFFSET = 10**9
STATES = tuple(s.value for s in SagaState)
# Python's int() also takes " 7", "+7", "7_0" and other scripts' digits; the API says integer.
_INTEGER = re.compile(r"-?[0-9]+")
_EARLIEST = datetime.min.replace(tzinfo=timezone.utc)
_LATEST = datetime.max.replace(tzinfo=timezone.utc)
# Read by programs, not people: their errors are JSON too.
MACHINE_PATHS = ("/metrics", "/healthz")

ERROR_STATUS: dict[type[SagaflowError], int] = {
    SagaNotFound: 404,
    QuarantinedMessageNotFound: 404,
    InvalidSagaInput: 400,
    BadQuery: 400,
    InvalidOperation: 409,
    StoreUnavailable: 503,
    BrokerUnavailable: 503,
}


@dataclass(frozen=True)
class Dashboard:
    """What the routes of one dashboard app read: each group of routes is registered with it."""

    client: SagaClient
    registry: CollectorRegistry
    auth: tuple[str, str] | None
    actions: bool
    flower: str | None
    definitions: Registry = field(default_factory=Registry)  # for each type's key fields


def wants_json() -> bool:
    return (
        request.path.startswith("/api/")
        or request.path in MACHINE_PATHS
        or request.accept_mimetypes.best == "application/json"
    )


def error_response(
    status: int, error_type: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    if wants_json():
        response = jsonify({"error": {"type": error_type, "message": message}})
    else:
        title = f"{status} {HTTPStatus(status).phrase}"
        page = render_template("error.html", title=title, message=message)
        response = Response(page, mimetype="text/html")
    response.status_code = status
    response.headers.update(headers or {})
    return response


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, _http_error)
    for kind in ERROR_STATUS:  # any other error is the dashboard's own: a 500, logged
        app.register_error_handler(kind, _sagaflow_error)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    if status >= 500:
        # Flask has logged the exception; its text may hold internals, so it stays in the log.
        message = "the dashboard failed on this request: the error is in its log"
    else:
        message = exc.description or HTTPStatus(status).phrase
    # e.g. Allow on a 405: what the exception would send, less its own HTML content type
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    return error_response(status, type(exc).__name__, message, headers)


def _sagaflow_error(exc: SagaflowError) -> Response:
    status = next(s for kind, s in ERROR_STATUS.items() if isinstance(exc, kind))
    return error_response(status, type(exc).__name__, str(exc))


# -- query arguments -------------------------------------------------------------------------


def list_filters(args: MultiDict[str, str]) -> dict[str, Any]:
    """The list's filters and paging, as SagaStore.list_sagas takes them (id_prefix apart)."""
    state = args.get("state") or None
    if state is not None and state not in STATES:
        raise BadQuery(f"unknown state {state!r:.80}: use one of {', '.join(STATES)}")
    return {
        "state": state,
        "saga_type": saga_type_arg(args),
        "since": since_arg(args),
        "where": where_arg(args.getlist("where")),
        "limit": int_arg(args, "limit", PAGE_SIZE, 1, MAX_LIMIT),
        "offset": int_arg(args, "offset", 0, 0, MAX_OFFSET),
    }


def where_arg(texts: list[str]) -> list[FieldMatch]:
    """Searches on the input, each `key=value` (nested keys with dots)."""
    try:
        return field_matches(texts)
    except InvalidSagaInput as exc:
        raise BadQuery(str(exc)) from None


def search_terms(text: str) -> list[str]:
    """The search box's `key=value` terms, split as a shell would (quote a value with spaces)."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise BadQuery(f"search {text!r:.80}: {exc}") from None


def saga_type_arg(args: MultiDict[str, str]) -> str | None:
    saga_type = args.get("type") or None
    if saga_type is None:
        return None
    if "\x00" in saga_type:
        raise BadQuery("type must not contain a NUL character")
    if len(saga_type) > MAX_SAGA_TYPE_LENGTH:
        raise BadQuery(f"type is over {MAX_SAGA_TYPE_LENGTH} characters: no saga type is")
    return saga_type


def id_prefix_arg(args: MultiDict[str, str], name: str) -> str | None:
    """A saga id or its beginning (which, by the id's pattern, is itself a well-formed id)."""
    prefix = (args.get(name) or "").strip() or None
    if prefix is not None and not SAGA_ID_PATTERN.match(prefix):
        raise BadQuery(
            f"{name} {prefix!r:.80} begins no saga id: ids are at most 64 letters, digits "
            "and _.:@- (starting with a letter or digit)"
        )
    return prefix


def since_arg(args: MultiDict[str, str]) -> datetime | None:
    text = args.get("since") or None
    if text is None:
        return None
    try:
        moment = parse_since(text)
    except OverflowError:  # a duration longer than the calendar: every saga is newer
        return None
    except ValueError:
        raise BadQuery(
            f"since {text!r:.80} is neither a duration (30m, 2h, 1d, 1w) nor an ISO 8601 time"
        ) from None
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:  # a moment at an end of the calendar, out of it once in UTC
        return _EARLIEST if moment.year == datetime.min.year else _LATEST


def int_arg(args: MultiDict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = args.get(name)
    if text in (None, ""):
        return default
    if not _INTEGER.fullmatch(text):
        raise BadQuery(f"{name} must be an integer, got {text!r:.40}")
    # Past 20 digits it is out of range whatever it says (and int() refuses 4,300 digits).
    value = int(text) if len(text.lstrip("-0")) <= 20 else high + 1
    if not low <= value <= high:
        raise BadQuery(f"{name} must be between {low} and {high}")
    return value
