"""What SagaClient checks before it asks the store or sends anything: a start's saga type, id,
deadline and input, a listing's filters, a saga id to read. Each refusal says why. Also
`parse_since`, the `since` filter as the CLI and the dashboard take it."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from sagaflow.core.definitions import SagaState, check_deadline
from sagaflow.core.protocol import MAX_INPUT_DEPTH, SAGA_ID_PATTERN, input_problem
from sagaflow.core.search import field_matches
from sagaflow.errors import DefinitionError, InvalidSagaInput, SagaNotFound

MAX_SAGA_ID_LENGTH = 64
MAX_SAGA_TYPE_LENGTH = 200  # the store's column


def checked_start(
    saga_type: object, data: object, saga_id: object, deadline: float | None, max_bytes: int
) -> dict[str, Any]:
    """A start's arguments checked (the first wrong one refused, with the reason); returns its
    input as a JSON-clean copy."""
    try:
        check_deadline("deadline", deadline)
    except DefinitionError as exc:
        raise InvalidSagaInput(str(exc)) from None
    if not isinstance(saga_type, str) or not saga_type:
        raise InvalidSagaInput(f"saga type must be a non-empty string, got {saga_type!r}")
    if len(saga_type) > MAX_SAGA_TYPE_LENGTH:
        raise InvalidSagaInput(
            f"saga type {saga_type:.80}... is over {MAX_SAGA_TYPE_LENGTH} characters"
        )
    if (problem := input_problem(saga_type)) is not None:
        raise InvalidSagaInput(f"saga type {saga_type!r:.80} refused: {problem}")
    payload = validate_input(data, max_bytes)
    if saga_id is not None and (not isinstance(saga_id, str) or not SAGA_ID_PATTERN.match(saga_id)):
        raise InvalidSagaInput(
            f"saga id {saga_id!r:.80} refused: at most {MAX_SAGA_ID_LENGTH} characters, "
            "letters, digits and _.:@- (starting with a letter or digit)"
        )
    return payload


def validate_input(data: object, max_bytes: int) -> dict[str, Any]:
    """Check saga input is a JSON object within the size limit; return a JSON-clean copy."""
    if not isinstance(data, Mapping):
        raise InvalidSagaInput(
            f"saga input must be a JSON object (a dict), got {type(data).__name__}"
        )
    try:
        text = json.dumps(data, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidSagaInput(f"saga input is not JSON-serialisable: {exc}") from exc
    except RecursionError:
        deep = f"saga input is nested more than {MAX_INPUT_DEPTH} levels deep"
        raise InvalidSagaInput(deep) from None
    problem = input_problem(data)
    if problem is not None:
        raise InvalidSagaInput(f"saga input refused: {problem}")
    size = len(text.encode())
    if size > max_bytes:
        raise InvalidSagaInput(f"saga input is {size} bytes of JSON, over the limit of {max_bytes}")
    result: dict[str, Any] = json.loads(text)
    return result


def list_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """SagaStore.list_sagas's filters, each checked: a wrong one is a clear error."""
    known = {"state", "saga_type", "since", "id_prefix", "where", "limit", "offset"}
    unknown = sorted(set(filters) - known)
    if unknown:
        raise InvalidSagaInput(f"unknown filter {unknown[0]!r}: use {', '.join(sorted(known))}")
    checked = dict(filters)
    state = checked.get("state")
    if state is not None:
        try:
            checked["state"] = SagaState(state) if not isinstance(state, SagaState) else state
        except (ValueError, TypeError):
            states = ", ".join(s.value for s in SagaState)
            raise InvalidSagaInput(f"unknown state {state!r:.80}: use one of {states}") from None
    for name in ("saga_type", "id_prefix"):
        value = checked.get(name)
        if value is not None and (not isinstance(value, str) or input_problem(value)):
            raise InvalidSagaInput(f"{name} must be plain text, not {value!r:.80}")
        if isinstance(value, str) and len(value) > MAX_SAGA_TYPE_LENGTH:
            raise InvalidSagaInput(f"{name} is over {MAX_SAGA_TYPE_LENGTH} characters")
    checked["where"] = matches = field_matches(checked.get("where"))
    for match in matches:
        for text in (*match.path, *(v for v in match.values if isinstance(v, str))):
            problem = input_problem(text)
            if problem:
                raise InvalidSagaInput(f"search on {match.key!r:.80}: {problem}")
    since = checked.get("since")
    if since is not None and not isinstance(since, datetime):
        raise InvalidSagaInput(f"since must be a datetime, not {since!r:.80}")
    for name, default, high in (("limit", 50, 10_000), ("offset", 0, 10**9)):
        value = checked.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
            raise InvalidSagaInput(f"{name} must be an integer from 0 to {high}, not {value!r:.80}")
    return checked


def check_saga_id(saga_id: object) -> None:
    """SagaNotFound for an id that no saga can have (start refuses it), without asking the store:
    PostgreSQL's driver fails on NUL characters and lone surrogates instead of finding nothing."""
    if not isinstance(saga_id, str) or not SAGA_ID_PATTERN.match(saga_id):
        raise SagaNotFound(f"no saga {saga_id!r:.80}: not a valid saga id")


_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`30m`, `2h`, `1d`, `1w` ago, or an ISO 8601 date or time (UTC unless it says otherwise)."""
    now = now or datetime.now(timezone.utc)
    match = _AGO.match(text)
    if match:
        return now - timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 2h, 1d, 1w) nor an ISO 8601 time"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
