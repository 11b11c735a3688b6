"""Random JSON thrown at every orchestrator task, through the task as Celery registered it, on a
real store (SQLite and PostgreSQL): nothing raises, nothing logs a traceback, and the only
changes are recorded rejections and quarantined messages.

The worker-level path (the consumer's screen, acknowledgement, the worker surviving) is
test_quarantine.py's; this one explores the argument space the screen lets through.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagaflow.config import Settings
from sagaflow.core.protocol import (
    ERRBACK_TASK,
    OPERATOR_TASK,
    RECOVER_TASK,
    START_TASK,
    STEP_FAILED_TASK,
    STEP_SUCCEEDED_TASK,
)
from sagaflow.core.quarantine import QUARANTINE_TASK
from sagaflow.messaging.orchestrator_app import create_orchestrator_app, orchestrator_of
from sagaflow.store.factory import open_store
from sagaflow.store.protocol import SagaStore
from tests.conftest import create_postgres_database, drop_postgres_database

HOSTILE_TEXT = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["a\x00b", "\ud800", "x" * 300, "", "-1", "nope"]),
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | HOSTILE_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(HOSTILE_TEXT, children, max_size=4)
    ),
    max_leaves=12,
)
# Values near the valid ones for each parameter, so the checks behind the first are explored
# too. No id of an existing saga and no registered saga type: a random message must change
# nothing, and a well-formed one naming a real saga would rightly change it.
COUNT = st.integers(min_value=-2, max_value=4) | st.integers(min_value=2**31 - 1, max_value=2**64)
NEAR_VALID: dict[str, st.SearchStrategy[Any]] = {
    "saga_id": st.sampled_from(["no-such-saga", "a\x00b", "x\ud800", "x" * 65, ""]) | JSON,
    "saga_type": st.sampled_from(["no-such-type", "t\x00", "x" * 300]) | JSON,
    "data": JSON,
    "deadline": st.floats(allow_nan=True, allow_infinity=True) | JSON,
    "step": HOSTILE_TEXT | JSON,
    "position": COUNT | JSON,
    "phase": st.sampled_from(["action", "compensation", "verify"]) | JSON,
    "attempt": COUNT | JSON,
    "tries": COUNT | JSON,
    "result": JSON,
    "error": st.dictionaries(st.sampled_from(["type", "message", "traceback"]), JSON) | JSON,
    "action": st.sampled_from(["retry", "mark_compensated", "cancel", "resolve"]) | JSON,
    "reason": HOSTILE_TEXT | JSON,
    "applied": st.booleans() | JSON,
}
OUTCOME = ("saga_id", "step", "position", "phase", "attempt", "tries")
PARAMETERS = {
    START_TASK: ("saga_id", "saga_type", "data", "deadline"),
    STEP_SUCCEEDED_TASK: ("result", *OUTCOME),
    STEP_FAILED_TASK: ("error", *OUTCOME),
    OPERATOR_TASK: ("action", "saga_id", "step", "reason", "applied", "result"),
    RECOVER_TASK: (),
    QUARANTINE_TASK: ("record",),
    ERRBACK_TASK: OUTCOME,
}
RECORD = st.fixed_dictionaries(
    {},
    optional={
        "id": st.sampled_from(["abc123", "a b", ""]) | JSON,
        "reason": st.sampled_from(["oversize", "not_a_task", "bogus"]) | JSON,
        "received_at": st.sampled_from(["2026-12-03T06:00:00+00:00", "yesterday"]) | JSON,
        "body": st.sampled_from(["", "e30=", "not base64!"]) | JSON,
        "body_size": COUNT | JSON,
        "truncated": st.booleans() | JSON,
        "headers": JSON,
        "detail": HOSTILE_TEXT,
    },
)


def arguments(task: str) -> st.SearchStrategy[tuple[list[Any], dict[str, Any]]]:
    names = PARAMETERS[task]
    values = {name: RECORD | JSON if name == "record" else NEAR_VALID[name] for name in names}
    near_valid = st.fixed_dictionaries({}, optional=values)
    extra = st.dictionaries(HOSTILE_TEXT, JSON, max_size=2)
    kwargs = st.one_of(near_valid, near_valid, near_valid, st.builds(_merge, near_valid, extra))
    args = st.one_of(st.just([]), st.just([]), st.lists(JSON, max_size=7))
    return st.tuples(args, kwargs)


def _merge(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    return {**first, **second}


TASKS = list(PARAMETERS)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def orchestrator_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    home: Path = tmp_path_factory.mktemp(f"property-{request.param}")
    pg_url = create_postgres_database() if request.param == "postgresql" else None
    conf = Settings(
        home=home,
        database_url=pg_url or f"sqlite:///{home / 'sagaflow.db'}",
        definitions=("tests.sagas",),
    )
    store = open_store(conf.database_url)
    store.upgrade()
    app = create_orchestrator_app(conf, store=store)
    try:
        yield app
    finally:
        store.dispose()
        if pg_url:
            drop_postgres_database(pg_url)


def snapshot(store: SagaStore) -> dict[str, int]:
    counts = store.count_by_state()
    counts.pop("rejected", None)
    return {state: count for state, count in counts.items() if count}


@pytest.mark.parametrize("task_name", TASKS)
def test_no_orchestrator_task_raises_on_random_json(
    orchestrator_app: Any, task_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    store: SagaStore = orchestrator_of(orchestrator_app).store
    # A saga in flight, which no random message may move.
    running = orchestrator_of(orchestrator_app).start(
        f"prop-{uuid.uuid4().hex[:8]}", "trip", {}, None
    )
    version = store.get(running).version
    before = snapshot(store)
    task = orchestrator_app.tasks[task_name]
    tried = 0

    @settings(
        max_examples=150,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(call_arguments=arguments(task_name))
    def call(call_arguments: tuple[list[Any], dict[str, Any]]) -> None:
        nonlocal tried
        args, kwargs = call_arguments
        tried += 1
        if task_name == ERRBACK_TASK and not (args and isinstance(args[0], str)):
            # Only the published form comes from a message; the inline form is called by
            # Celery itself with (request, exception, traceback).
            args = [str(args[0] if args else ""), *args[1:]]
        caplog.clear()
        with caplog.at_level(logging.INFO):
            task.run(*args, **kwargs)
        tracebacks = [r for r in caplog.records if r.exc_info]
        assert not tracebacks, f"{task_name}{args!r:.200} {kwargs!r:.200}: {tracebacks[0]}"

    call()
    assert tried >= 100
    assert snapshot(store) == before, "a random message changed a saga's state"
    assert store.get(running).version == version, "a random message moved the running saga"


# -- the client -------------------------------------------------------------------------------

CLIENT_CALLS: dict[str, Any] = {
    "start": st.tuples(
        st.sampled_from(["no-such-type", "t\x00", "x" * 300, ""]) | JSON,
        JSON,
        st.fixed_dictionaries(
            {}, optional={"saga_id": NEAR_VALID["saga_id"], "deadline": NEAR_VALID["deadline"]}
        ),
    ),
    "get": st.tuples(NEAR_VALID["saga_id"]),
    "history": st.tuples(NEAR_VALID["saga_id"]),
    "cancel": st.tuples(NEAR_VALID["saga_id"], NEAR_VALID["reason"]),
    "retry": st.tuples(NEAR_VALID["saga_id"]),
    "mark_compensated": st.tuples(NEAR_VALID["saga_id"], HOSTILE_TEXT | JSON, HOSTILE_TEXT | JSON),
    "resolve": st.tuples(
        NEAR_VALID["saga_id"], HOSTILE_TEXT | JSON, st.booleans() | JSON, HOSTILE_TEXT | JSON
    ),
    "list_sagas": st.fixed_dictionaries(
        {},
        optional={
            "state": st.sampled_from(["pending", "bogus"]) | JSON,
            "saga_type": HOSTILE_TEXT | JSON,
            "id_prefix": HOSTILE_TEXT | JSON,
            "limit": COUNT | JSON,
            "offset": COUNT | JSON,
        },
    ),
}


@pytest.mark.parametrize("method", list(CLIENT_CALLS))
def test_no_client_method_raises_anything_but_a_sagaflow_error(
    orchestrator_app: Any, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    from sagaflow.client.saga_client import SagaClient
    from sagaflow.errors import SagaflowError

    store: SagaStore = orchestrator_of(orchestrator_app).store
    conf = orchestrator_app.conf
    settings_used = Settings(
        home=Path(conf.broker_transport_options["data_folder_in"]).parent,
        database_url=store.url,
    )
    client = SagaClient(settings_used, store=store)
    before = snapshot(store)
    before.pop("requested", None)
    call = getattr(client, method)
    started: list[str] = []

    @settings(
        max_examples=100,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(arguments=CLIENT_CALLS[method])
    def one(arguments: Any) -> None:
        caplog.clear()
        try:
            if method == "start":
                saga_type, data, options = arguments
                started.append(call(saga_type, data, **options))
            elif method == "list_sagas":
                call(**arguments)
            else:
                call(*arguments)
        except SagaflowError:
            pass  # a clear error, sagaflow's own
        tracebacks = [r for r in caplog.records if r.exc_info]
        assert not tracebacks, f"{method}{arguments!r:.300}: {tracebacks[0]}"

    with caplog.at_level(logging.INFO):
        one()
    after = snapshot(store)
    after.pop("requested", None)
    assert after == before, "a client call changed a saga's state"
    for saga_id in started:  # what start accepted is recorded as asked, to be planned later
        assert store.get(saga_id).state.value in ("requested", "rejected")
