"""The saga dashboard, its JSON API and its Prometheus metrics, against real stacks.

The Flask app is driven through its WSGI test client (a real store, real workers behind it);
the `sagaflow dashboard` command is also run as a real server process.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import schemathesis
import sqlalchemy as sa
from flask.testing import FlaskClient
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from sagaflow import SagaState
from sagaflow.config import Settings
from sagaflow.core.vocabulary import HistoryEvent
from sagaflow.devstack.processes import WorkerSpec
from sagaflow.errors import ConfigurationError, SagaNotFound
from sagaflow.ops.dashboard import create_dashboard
from tests.acceptance.test_cli import UNREACHABLE_PG, describe, isolated_env, sagaflow
from tests.conftest import Stack, http_get, poll
from tests.integration.test_hostile_input import LONE_SURROGATE

AUTH = ("ops", "s3cret-pw")


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def web(stack: Stack) -> FlaskClient:
    app = create_dashboard(
        stack.settings, client=stack.client, flower_url="http://flower.example:5555/", metrics_lag=0
    )
    return app.test_client()


@pytest.fixture
def operator_web(stack: Stack) -> FlaskClient:
    app = create_dashboard(stack.settings, client=stack.client, auth=AUTH, actions=True)
    return app.test_client()


def cli_json(stack: Stack, *args: str) -> Any:
    result = sagaflow(*args, "--json", env=stack.env)
    assert result.returncode == 0, describe(result)
    return json.loads(result.stdout)


def test_the_api_returns_what_the_cli_prints(stack: Stack, web: FlaskClient) -> None:
    done = stack.start("trip", {})
    failed = stack.start("trip", {"fail_at": ["a3"]})
    stack.wait([done, failed])

    assert web.get(f"/api/sagas/{failed}").json == cli_json(stack, "status", failed)
    assert web.get(f"/api/sagas/{failed}/history").json == cli_json(stack, "history", failed)
    listed = web.get("/api/sagas?type=trip&limit=5").json
    assert listed == cli_json(stack, "list", "--type", "trip", "--limit", "5")
    assert [s["saga_id"] for s in listed[:2]] == [failed, done]  # newest first

    counts = web.get("/api/counts").json
    assert counts["completed"] >= 1 and counts["failed"] >= 1
    assert list(counts)[: len(SagaState)] == [s.value for s in SagaState]


def test_list_filters_by_state_type_since_id_and_pages(stack: Stack, web: FlaskClient) -> None:
    ids = [stack.start("partial", {"fail_at": ["a3"]} if i % 2 else {}) for i in range(4)]
    stack.wait(ids)
    failed = [i for n, i in enumerate(ids) if n % 2]

    by_state = web.get("/api/sagas?type=partial&state=failed&limit=100").json
    assert {s["saga_id"] for s in by_state} >= set(failed)
    assert all(s["state"] == "failed" and s["saga_type"] == "partial" for s in by_state)

    assert web.get(f"/api/sagas?id_prefix={ids[2][:13]}").json[0]["saga_id"] == ids[2]
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    assert web.get("/api/sagas", query_string={"since": future}).json == []
    recent = {s["saga_id"] for s in web.get("/api/sagas?since=10m&limit=1000").json}
    assert set(ids) <= recent

    first = web.get("/api/sagas?type=partial&limit=2").json
    second = web.get("/api/sagas?type=partial&limit=2&offset=2").json
    assert [s["saga_id"] for s in first + second] == list(reversed(ids))[:4]

    page = web.get("/?type=partial&limit=2")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert ids[-1] in html and ids[0] not in html
    assert "older &rarr;" in html


def test_search_by_full_id_opens_the_saga(stack: Stack, web: FlaskClient) -> None:
    saga_id = stack.start("trip", {})
    stack.wait_one(saga_id)
    response = web.get("/", query_string={"q": saga_id})
    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"/sagas/{saga_id}")


def test_saga_page_shows_steps_compensations_errors_and_flower_links(
    stack: Stack, web: FlaskClient
) -> None:
    saga_id = stack.start("trip", {"fail_at": ["a3"]})
    saga = stack.wait_one(saga_id)
    html = web.get(f"/sagas/{saga_id}").get_data(as_text=True)
    assert "StepRefused" in html
    for step in saga.steps[:2]:
        assert f'data-compensation="{step.name}"' in html
        assert f"http://flower.example:5555/task/{step.task_id}" in html
        assert f"http://flower.example:5555/task/{step.compensation_task_id}" in html
    assert 'data-compensation="a3"' not in html  # the failed step itself is not undone
    # compensations in reverse order in the history
    events = [
        (h["event"], h["step"])
        for h in web.get(f"/api/sagas/{saga_id}/history").json
        if h["event"] == HistoryEvent.STEP_COMPENSATED
    ]
    assert events == [(HistoryEvent.STEP_COMPENSATED, "b2"), (HistoryEvent.STEP_COMPENSATED, "a1")]


def test_bad_requests_get_clear_errors(stack: Stack, web: FlaskClient) -> None:
    missing = web.get("/api/sagas/no-such-saga")
    assert missing.status_code == 404
    assert missing.json == {
        "error": {"type": "SagaNotFound", "message": "no saga 'no-such-saga' in the store"}
    }
    assert web.get("/sagas/no-such-saga").status_code == 404

    bad_state = web.get("/api/sagas?state=bogus")
    assert bad_state.status_code == 400 and "bogus" in bad_state.json["error"]["message"]
    bad_since = web.get("/api/sagas?since=yesterday-ish")
    assert bad_since.status_code == 400
    assert "neither a duration" in bad_since.json["error"]["message"]
    assert web.get("/api/sagas?limit=0").status_code == 400
    assert web.get("/api/sagas?offset=x").json == {
        "error": {"type": "BadQuery", "message": "offset must be an integer, got 'x'"}
    }


# What an attacker sends: each is answered 4xx with a JSON error under /api/, never a 500.
HOSTILE_API_REQUESTS = [
    ("GET", "/api/sagas/a%00b", 404, "SagaNotFound"),
    ("GET", "/api/sagas/a%00b/history", 404, "SagaNotFound"),
    ("GET", "/api/sagas/%ED%A0%80", 404, "SagaNotFound"),  # a surrogate as UTF-8 would spell it
    ("GET", "/api/sagas/" + "x" * 65, 404, "SagaNotFound"),
    ("GET", "/api/sagas/has%20space", 404, "SagaNotFound"),
    ("GET", "/api/sagas?id_prefix=%00", 400, "BadQuery"),
    ("GET", "/api/sagas?type=tr%00ip", 400, "BadQuery"),
    ("GET", "/api/sagas?type=" + "t" * 201, 400, "BadQuery"),
    ("GET", "/api/sagas?state=%00", 400, "BadQuery"),
    ("GET", "/api/sagas?since=%00", 400, "BadQuery"),
    ("GET", "/api/sagas?since=2026-13-45", 400, "BadQuery"),
    ("GET", "/api/sagas?limit=abc", 400, "BadQuery"),
    ("GET", "/api/sagas?limit=1.5", 400, "BadQuery"),
    ("GET", "/api/sagas?limit=" + "9" * 5000, 400, "BadQuery"),
    ("GET", "/api/sagas?offset=-1", 400, "BadQuery"),
    ("GET", "/api/sagas?offset=%2B5", 400, "BadQuery"),
    ("GET", "/api/sagas?stat=failed", 400, "BadQuery"),  # misspelt: not a list of every saga
    ("GET", "/api/counts?state=failed", 400, "BadQuery"),
    ("GET", "/api/sagas/some-saga?limit=5", 400, "BadQuery"),
    ("POST", "/api/sagas/some-saga/delete", 404, "NotFound"),
    ("POST", "/api/sagas/a%00b/cancel", 403, "Forbidden"),  # actions are off on this dashboard
    ("GET", "/api/sagas/some-saga/cancel", 405, "MethodNotAllowed"),
    ("DELETE", "/api/sagas", 405, "MethodNotAllowed"),
    ("PUT", "/api/counts", 405, "MethodNotAllowed"),
    ("GET", "/api/no/such/route", 404, "NotFound"),
    ("GET", "/api/", 404, "NotFound"),
]


@pytest.fixture
def statements(stack: Stack) -> Iterator[list[str]]:
    """Every SQL statement the test process's store sends during the test."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    sa.event.listen(stack.store.engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(stack.store.engine, "before_cursor_execute", record)


@pytest.mark.parametrize(("method", "path", "status", "error_type"), HOSTILE_API_REQUESTS)
def test_hostile_api_requests_get_json_errors_never_a_500(
    stack: Stack,
    web: FlaskClient,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    status: int,
    error_type: str,
) -> None:
    response = web.open(path, method=method, json={} if method == "POST" else None)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert set(response.json) == {"error"}
    assert response.json["error"]["type"] == error_type
    assert isinstance(response.json["error"]["message"], str) and response.json["error"]["message"]
    if status == 405:
        assert response.headers["Allow"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_impossible_saga_ids_are_not_found_without_asking_the_store(
    web: FlaskClient, statements: list[str]
) -> None:
    for path in ("/api/sagas/a%00b", "/api/sagas/%ED%A0%80/history", "/sagas/" + "x" * 65):
        response = web.get(path)
        assert response.status_code == 404, path
        assert "not a valid saga id" in response.get_data(as_text=True), path
    assert statements == []
    assert web.get("/api/sagas/plain-but-absent").status_code == 404
    assert statements, "a possible id is looked up in the store"


@pytest.mark.parametrize(
    "saga_id", ["a\x00b", f"sur{LONE_SURROGATE}", "x" * 65, "", "-dash", 42], ids=repr
)
def test_the_client_answers_impossible_ids_with_saga_not_found(
    stack: Stack, statements: list[str], saga_id: Any
) -> None:
    calls = {
        "get": lambda: stack.client.get(saga_id),
        "history": lambda: stack.client.history(saga_id),
        "cancel": lambda: stack.client.cancel(saga_id, "no reason"),
        "retry": lambda: stack.client.retry(saga_id),
        "mark_compensated": lambda: stack.client.mark_compensated(saga_id, "a1", "by hand"),
        "resolve": lambda: stack.client.resolve(saga_id, "a1", True, "checked"),
    }
    for name, call in calls.items():
        with pytest.raises(SagaNotFound, match="not a valid saga id"):
            call()
        assert statements == [], name


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/sagas/a%00b", 404, "not a valid saga id"),
        ("/sagas/no-such-saga", 404, "no saga &#39;no-such-saga&#39; in the store"),
        ("/?q=%00", 400, "begins no saga id"),
        ("/?q=has%20space", 400, "begins no saga id"),
        ("/?type=a%00", 400, "NUL character"),
        ("/?state=bogus", 400, "unknown state"),
        ("/?since=tomorrow", 400, "neither a duration"),
        ("/?limit=-3", 400, "limit must be between 1 and 1000"),
        ("/no/such/page", 404, "not found"),
        ("/sagas/some-saga/cancel", 405, "not allowed"),
    ],
)
def test_hostile_page_requests_get_an_error_page(
    stack: Stack,
    web: FlaskClient,
    caplog: pytest.LogCaptureFixture,
    path: str,
    status: int,
    message: str,
) -> None:
    response = web.get(path)
    assert response.status_code == status
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert f'<h2 id="error-status">{status} ' in html
    assert message in html.lower() or message in html
    assert 'href="/">all sagas</a>' in html
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_edges_of_the_calendar_and_odd_headers_are_no_500(stack: Stack, web: FlaskClient) -> None:
    saga_id = stack.start("trip", {})
    stack.wait_one(saga_id)
    for since in ("99999999999999w", "1" * 400 + "d", "0001-01-01T00:00+05:00"):  # all of time
        listed = web.get("/api/sagas", query_string={"since": since, "limit": 1000})
        assert listed.status_code == 200, since
        assert saga_id in {s["saga_id"] for s in listed.json}, since
    future = web.get("/api/sagas", query_string={"since": "9999-12-31T23:59-12:00"})
    assert future.status_code == 200 and future.json == []
    page = web.get("/?refresh=1e999")
    assert page.status_code == 200 and 'http-equiv="refresh"' not in page.get_data(as_text=True)
    assert 'content="5"' in web.get("/?refresh=5").get_data(as_text=True)


def test_without_credentials_the_api_answers_json_and_the_pages_a_page(
    stack: Stack, operator_web: FlaskClient
) -> None:
    challenge = 'Basic realm="sagaflow", charset="UTF-8"'
    for path in ("/api/counts", "/api/no-such-route", "/metrics"):
        refused = operator_web.get(path)
        assert refused.status_code == 401, path
        assert refused.headers["WWW-Authenticate"] == challenge
        assert refused.json == {
            "error": {"type": "Unauthorized", "message": "authentication required"}
        }
    page = operator_web.get("/")
    assert page.status_code == 401 and page.mimetype == "text/html"
    assert page.headers["WWW-Authenticate"] == challenge
    assert "401 Unauthorized" in page.get_data(as_text=True)
    # a form post whose Origin cannot even be parsed is refused like a cross-site one
    saga_id = stack.start("trip", {})
    refused = operator_web.post(
        f"/sagas/{saga_id}/cancel", headers={**basic(*AUTH), "Origin": "http://[::1"}
    )
    assert refused.status_code == 403
    assert "cross-site" in refused.get_data(as_text=True)


def test_a_failure_of_the_dashboard_itself_is_a_500_that_keeps_its_details_in_the_log(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_dashboard(stack.settings, client=stack.client)

    def broken() -> str:
        raise RuntimeError("internal detail")

    app.add_url_rule("/api/broken", view_func=broken)
    app.add_url_rule("/broken", view_func=broken)
    web = app.test_client()
    failed = web.get("/api/broken")
    assert failed.status_code == 500
    assert failed.json["error"]["type"] == "InternalServerError"
    assert "internal detail" not in failed.get_data(as_text=True)
    page = web.get("/broken")
    assert page.status_code == 500 and page.mimetype == "text/html"
    assert "500 Internal Server Error" in page.get_data(as_text=True)
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 2 and all(r.exc_info for r in logged)


def test_metrics_carry_prometheus_content_type_once(web: FlaskClient) -> None:
    response = web.get("/metrics")
    assert response.status_code == 200
    assert response.headers.getlist("Content-Type") == [CONTENT_TYPE_LATEST]


def test_openapi_describes_every_route_of_the_api(web: FlaskClient) -> None:
    document = web.get("/api/openapi.json").json
    assert document["openapi"].startswith("3.")
    described = {
        (path, method.upper())
        for path, operations in document["paths"].items()
        for method in operations
    }
    app = web.application
    served = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(("/api/", "/metrics", "/healthz")):
            continue
        # <any(cancel, retry):action> is one described path per action
        choices = re.search(r"<any\(([^)]*)\):action>", rule.rule)
        path = re.sub(r"<(?:[^:>]+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method in ("HEAD", "OPTIONS"):
                continue
            if choices:
                actions = [a.strip() for a in choices.group(1).split(",")]
                served |= {(path.replace("{action}", a), method) for a in actions}
            else:
                served.add((path, method))
    assert described == served
    for operation in (op for ops in document["paths"].values() for op in ops.values()):
        assert operation["responses"], operation["operationId"]
        for parameter in operation.get("parameters", []):
            assert parameter["schema"], (operation["operationId"], parameter["name"])


def test_real_answers_match_the_openapi_description(stack: Stack, web: FlaskClient) -> None:
    failed = stack.start("partial", {"fail_at": ["a3"], "fail_compensation_at": ["a1"]})
    done = stack.start("trip", {})
    stack.wait([failed, done])
    schema = schemathesis.openapi.from_dict(web.get("/api/openapi.json").json)
    answers = [
        ("/api/sagas", "GET", web.get("/api/sagas?limit=20")),
        ("/api/sagas", "GET", web.get("/api/sagas?since=1h&state=failed")),
        ("/api/sagas/{saga_id}", "GET", web.get(f"/api/sagas/{failed}")),
        ("/api/sagas/{saga_id}", "GET", web.get(f"/api/sagas/{done}")),
        ("/api/sagas/{saga_id}/history", "GET", web.get(f"/api/sagas/{failed}/history")),
        ("/api/sagas/{saga_id}", "GET", web.get("/api/sagas/a%00b")),
        ("/api/counts", "GET", web.get("/api/counts")),
        ("/api/sagas/{saga_id}/cancel", "POST", web.post(f"/api/sagas/{done}/cancel", json={})),
        ("/healthz", "GET", web.get("/healthz")),
    ]
    for path, method, response in answers:
        schema[path][method].validate_response(response)
    assert len(web.get("/api/sagas?limit=20").json) >= 2


def test_actions_are_off_unless_enabled(stack: Stack, web: FlaskClient) -> None:
    saga_id = stack.start("trip", {})
    stack.wait_one(saga_id)
    html = web.get(f"/sagas/{saga_id}").get_data(as_text=True)
    assert "<button>" not in html
    refused = web.post(f"/api/sagas/{saga_id}/cancel", json={})
    assert refused.status_code == 403 and "disabled" in refused.json["error"]["message"]
    with pytest.raises(ConfigurationError, match="need authentication"):
        create_dashboard(stack.settings, client=stack.client, actions=True)


def test_auth_guards_every_page_but_health(stack: Stack, operator_web: FlaskClient) -> None:
    for path in ("/", "/api/counts", "/metrics", "/api/sagas"):
        assert operator_web.get(path).status_code == 401, path
        assert operator_web.get(path, headers=basic("ops", "wrong")).status_code == 401
        assert operator_web.get(path, headers=basic(*AUTH)).status_code == 200, path
    assert operator_web.get("/healthz").json == {"store": "ok"}


def test_retry_from_the_dashboard_resumes_compensation(
    stack: Stack, operator_web: FlaskClient
) -> None:
    saga_id = stack.start("trip", {"fail_at": ["a3"], "fail_first_compensation_at": ["b2"]})
    assert stack.wait_one(saga_id).state is SagaState.COMPENSATION_FAILED
    page = operator_web.get(f"/sagas/{saga_id}", headers=basic(*AUTH)).get_data(as_text=True)
    assert "retry compensation" in page

    # a form posted from another site, or with no origin at all, is refused
    for origin in ({"Origin": "http://evil.example"}, {}):
        refused = operator_web.post(f"/sagas/{saga_id}/retry", headers={**basic(*AUTH), **origin})
        assert refused.status_code == 403
    assert stack.store.get(saga_id).state is SagaState.COMPENSATION_FAILED

    done = operator_web.post(
        f"/sagas/{saga_id}/retry", headers={**basic(*AUTH), "Origin": "http://localhost"}
    )
    assert done.status_code == 303
    poll(
        lambda: stack.store.get(saga_id).state is SagaState.FAILED,
        60,
        lambda: f"{saga_id} is still {stack.store.get(saga_id).state.value}{stack.logs_hint()}",
    )
    again = operator_web.post(f"/api/sagas/{saga_id}/retry", json={}, headers=basic(*AUTH))
    assert again.status_code == 409, again.json
    assert "failed" in again.json["error"]["message"]


def test_cancel_from_the_api(stack: Stack, operator_web: FlaskClient) -> None:
    saga_id = stack.start("detour", {})
    stack.wait_dispatched(saga_id, 1)  # l2 waits on a queue nobody consumes yet
    as_form = operator_web.post(f"/api/sagas/{saga_id}/cancel", data="x", headers=basic(*AUTH))
    assert as_form.status_code == 415  # JSON only: a cross-site form cannot send it
    accepted = operator_web.post(f"/api/sagas/{saga_id}/cancel", json={}, headers=basic(*AUTH))
    assert accepted.status_code == 202, accepted.json
    later = stack.start_worker(WorkerSpec("later", "tests.services", ["later"]))
    try:
        saga = stack.wait_one(saga_id)
    finally:
        stack.group.stop_worker(later)
    assert saga.state is SagaState.CANCELLED
    assert saga.error is not None and saga.error.message == "cancelled from the dashboard"


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_metrics_count_sagas_and_step_durations(stack: Stack, web: FlaskClient) -> None:
    def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = web.get("/metrics")
        assert response.status_code == 200
        return metric_samples(response.get_data(as_text=True))

    before = samples()
    assert before["sagaflow_store_up", ()] == 1

    def value(s: dict[Any, float], name: str, **labels: str) -> float:
        return s.get((name, tuple(sorted(labels.items()))), 0.0)

    ids = [stack.start("partial", {}), stack.start("partial", {"fail_at": ["a3"]})]
    stack.wait(ids)
    after = samples()
    assert value(after, "sagaflow_sagas_started_total", saga_type="partial") == (
        value(before, "sagaflow_sagas_started_total", saga_type="partial") + 2
    )
    for state in ("completed", "failed"):
        assert value(after, "sagaflow_sagas_finished_total", saga_type="partial", state=state) == (
            value(before, "sagaflow_sagas_finished_total", saga_type="partial", state=state) + 1
        )
    labels = {"saga_type": "partial", "step": "a1", "phase": "action", "outcome": "succeeded"}
    count = value(after, "sagaflow_step_duration_seconds_count", **labels)
    assert count - value(before, "sagaflow_step_duration_seconds_count", **labels) == 2
    assert value(after, "sagaflow_step_duration_seconds_sum", **labels) > 0
    undo = {"saga_type": "partial", "step": "a1", "phase": "compensation", "outcome": "succeeded"}
    assert value(after, "sagaflow_step_duration_seconds_count", **undo) >= 1
    refused = {"saga_type": "partial", "step": "a3", "phase": "action", "outcome": "failed"}
    assert value(after, "sagaflow_step_duration_seconds_count", **refused) >= 1

    # A late or duplicate outcome is noted in the history; it neither starts nor finishes a saga.
    stack.store.record_ignored(ids[0], "a1", {"reason": "duplicate outcome"})
    noted = samples()
    for name, labels in (
        ("sagaflow_sagas_started_total", {"saga_type": "partial"}),
        ("sagaflow_sagas_finished_total", {"saga_type": "partial", "state": "completed"}),
    ):
        assert value(noted, name, **labels) == value(after, name, **labels), name

    refused = stack.start("partial", {"fail_at": ["a3"], "fail_compensation_at": ["a1"]})
    assert stack.wait_one(refused).state is SagaState.COMPENSATION_FAILED
    assert value(samples(), "sagaflow_sagas_needing_operator", saga_type="partial") >= 1

    stuck = stack.start("orphan", {})  # its second step waits on a queue nobody consumes
    stack.wait_dispatched(stuck, 1)
    flight = samples()
    assert value(flight, "sagaflow_sagas_in_flight", saga_type="orphan", state="pending") >= 1
    assert value(flight, "sagaflow_oldest_running_saga_age_seconds", saga_type="orphan") >= 0
    assert ("sagaflow_oldest_running_saga_age_seconds", (("saga_type", "orphan"),)) in flight


def test_unreachable_store_is_reported_not_hidden(tmp_path: Any) -> None:
    settings = Settings(home=tmp_path, database_url=UNREACHABLE_PG)
    web = create_dashboard(settings).test_client()
    counts = web.get("/api/counts")
    assert counts.status_code == 503
    assert counts.json["error"]["type"] == "StoreUnavailable"
    message = counts.json["error"]["message"]
    assert "unavailable" in message and "secretpw" not in message
    assert web.get("/healthz").status_code == 503
    metrics = metric_samples(web.get("/metrics").get_data(as_text=True))
    assert metrics["sagaflow_store_up", ()] == 0


def test_dashboard_command_serves_pages_api_and_metrics(
    stack: Stack, dashboard_process: tuple[str, subprocess.Popen[str]]
) -> None:
    url, _ = dashboard_process
    saga_id = stack.start("trip", {})
    stack.wait_one(saga_id)
    status, _, body = http_get(f"{url}/api/sagas/{saga_id}")
    assert status == 200 and json.loads(body)["state"] == "completed"
    status, headers, body = http_get(f"{url}/sagas/{saga_id}")
    assert status == 200 and "text/html" in headers["Content-Type"] and saga_id in body
    status, headers, body = http_get(f"{url}/metrics")
    assert headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert "sagaflow_sagas_started_total" in body


def test_dashboard_command_refuses_bad_setups(tmp_path: Any) -> None:
    env = isolated_env(tmp_path)
    no_auth = sagaflow("dashboard", "--enable-actions", env=env, timeout=30)
    assert no_auth.returncode == 1, describe(no_auth)
    assert "operator actions need authentication" in no_auth.stderr
    assert "Traceback" not in no_auth.stderr

    bad_auth = sagaflow("dashboard", "--auth", "nopassword", env=env, timeout=30)
    assert bad_auth.returncode == 1 and "user:password" in bad_auth.stderr

    started = time.monotonic()
    down = sagaflow("--database-url", UNREACHABLE_PG, "dashboard", env=env, timeout=60)
    assert down.returncode == 4, describe(down)
    assert "unavailable" in down.stderr and "secretpw" not in down.stderr
    assert time.monotonic() - started < 30
