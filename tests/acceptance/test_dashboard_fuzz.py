"""The dashboard fuzzed: the API with schemathesis against its own OpenAPI description, the pages
with hostile strings from hypothesis. Nothing may answer 500 or log an error, on PostgreSQL (whose
driver refuses NUL characters) and SQLite alike.

Both are derandomized with bounded examples: a failure is the same on every run, and each backend
is fuzzed in well under a minute.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagaflow import SagaState
from sagaflow.config import Settings, ensure_home
from sagaflow.core.records import HistoryEntry
from sagaflow.core.vocabulary import HistoryEvent
from sagaflow.ops.dashboard import create_dashboard
from sagaflow.store.factory import open_store
from tests.conftest import (
    ROOT,
    Stack,
    create_postgres_database,
    drop_postgres_database,
    free_port,
    http_get,
    poll,
)

AUTH = ("ops", "fuzz-pw")


class ErrorLog(logging.Handler):
    """What the app logged at ERROR or above (Flask logs an unhandled exception there)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def describe(self) -> str:
        return "\n".join(self.format(r) for r in self.records)


def basic_header(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> list[str]:
    """A completed, a failed and a compensation_failed saga, so that lists have real rows and
    the fuzzer follows their ids into the other operations."""
    ids = [
        stack.start("trip", {}),
        stack.start("trip", {"fail_at": ["a3"]}),
        stack.start("partial", {"fail_at": ["a3"], "fail_compensation_at": ["a1"]}),
    ]
    stack.wait(ids)
    return ids


@pytest.fixture
def fuzzed_settings(stack: Stack, seeded: list[str], tmp_path: Path) -> Iterator[Settings]:
    """A store of the stack's kind holding only the seeded sagas (copied with their history),
    so that what the fuzzer reads back, and so where it goes next, is the same on every run
    whatever else the session stored; and a broker nobody consumes, for the actions."""
    url = create_postgres_database() if stack.redis else f"sqlite:///{tmp_path / 'fuzzed.db'}"
    settings = Settings(home=tmp_path / "home", broker_url="filesystem://", database_url=url)
    ensure_home(settings)
    store = open_store(url)
    try:
        store.upgrade()
        for saga_id in seeded:
            history = [
                HistoryEntry(
                    HistoryEvent(row.event),
                    SagaState(row.from_state) if row.from_state else None,
                    SagaState(row.to_state),
                    row.step,
                    row.detail,
                )
                for row in stack.store.history(saga_id)
            ]
            assert store.create(stack.store.get(saga_id), history)
        yield settings
    finally:
        store.dispose()
        if stack.redis:
            drop_postgres_database(url)


@pytest.fixture
def served(fuzzed_settings: Settings, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`sagaflow dashboard` with basic auth and operator actions, its output in a file."""
    port = free_port()
    log = tmp_path / "dashboard.log"
    env = {
        **os.environ,
        **fuzzed_settings.to_env(),
        "PYTHONPATH": str(ROOT),
        "NO_COLOR": "1",
        "SAGAFLOW_DASHBOARD_AUTH": ":".join(AUTH),
        "SAGAFLOW_DASHBOARD_ACTIONS": "1",
    }
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "sagaflow", "dashboard", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"sagaflow dashboard exited {process.returncode}: {log.read_text()}")
        try:
            return http_get(f"{url}/healthz")[0] == 200
        except OSError:
            return False

    try:
        poll(answers, 30, lambda: f"dashboard on {url} never answered")
        yield url, log
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_the_api_conforms_to_its_description_under_fuzzing(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    """schemathesis with every default check, against the served dashboard: no 5xx, status
    codes, content types and bodies as described, schema-valid input accepted and invalid input
    refused, 401 without credentials, 405 for methods not described; the stateful phase follows
    the listed sagas' ids into the other operations."""
    url, log = served
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{url}/api/openapi.json",
            "--auth",
            ":".join(AUTH),
            "--max-examples",
            "40",
            "--generation-deterministic",
            "--workers",
            "1",
            "--no-color",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    cases = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert cases is not None and int(cases[1]) >= 300, run.stdout
    served_log = log.read_text()
    assert "Traceback" not in served_log and "ERROR" not in served_log, served_log


# -- the pages ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def operator_app(stack: Stack, seeded: list[str]) -> Iterator[tuple[Flask, ErrorLog]]:
    """The widest dashboard, in process: authentication and operator actions on."""
    app = create_dashboard(stack.settings, client=stack.client, auth=AUTH, actions=True)
    errors = ErrorLog()
    app.logger.addHandler(errors)
    try:
        yield app, errors
    finally:
        app.logger.removeHandler(errors)


HOSTILE = st.one_of(
    st.sampled_from(
        [
            "\x00",
            "a\x00b",
            "\ufffd",
            "%00",  # sent as it is: % is left unquoted, so escapes (and broken ones) get through
            "%ED%A0%80",  # a UTF-16 surrogate, as UTF-8 would spell it
            "%zz%",
            "x" * 5000,
            "9" * 400,
            "-1",
            "1e999",
            "0001-01-01T00:00+01:00",
            "9999-12-31T23:59-12:00",
            "99999999999999w",
            "<script>alert(1)</script>",
            "' OR 1=1 --",
            "[::1",
            "..",
            "",
        ]
    ),
    st.text(max_size=80),
    st.text(alphabet=st.characters(codec="ascii"), max_size=20),  # control characters too
)
UI_ARGUMENTS = ("q", "state", "type", "since", "limit", "offset", "refresh", "message")
UI_ANSWERS = {200, 302, 308, 400, 401, 403, 404, 405}  # 308: werkzeug merges a //


def _quote(text: str) -> str:
    return quote(text, safe="%")


def _query(arguments: dict[str, str]) -> str:
    return "&".join(f"{k}={_quote(v)}" for k, v in arguments.items())


@settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    arguments=st.dictionaries(st.sampled_from(UI_ARGUMENTS), HOSTILE, max_size=4),
    saga_id=HOSTILE,
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    page=st.sampled_from(["/", "/sagas/{id}", "/sagas/{id}/cancel", "/sagas/{id}/retry", "/{id}"]),
)
def test_the_pages_answer_hostile_requests_with_an_error_page(
    operator_app: tuple[Flask, ErrorLog],
    arguments: dict[str, str],
    saga_id: str,
    method: str,
    page: str,
) -> None:
    app, errors = operator_app
    path = page.replace("{id}", _quote(saga_id))
    headers = {**basic_header(*AUTH), "Origin": "http://localhost", "Accept": "text/html"}
    response = app.test_client().open(f"{path}?{_query(arguments)}", method=method, headers=headers)
    described = f"{method} {path}?{_query(arguments)} -> {response.status_code}"
    assert response.status_code in UI_ANSWERS, described
    for_programs = response.request.path.startswith("/api/") or response.request.path in (
        "/metrics",
        "/healthz",
    )
    if response.status_code >= 400 and not for_programs:
        assert response.mimetype == "text/html", described
        assert 'id="error-message"' in response.get_data(as_text=True), described
    assert not errors.records, f"{described}\n{errors.describe()}"
