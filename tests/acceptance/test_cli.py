"""The `sagaflow` command, run for real in subprocesses against real stacks (and the demo)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import pytest

from sagaflow import SagaState, StepStatus
from sagaflow.core.vocabulary import HistoryEvent
from sagaflow.ops.cli import cli
from sagaflow.store.factory import open_store
from sagaflow.store.migrate import head_revision
from tests.conftest import ROOT, Stack

TRIP = ["a1", "b2", "a3", "b4"]
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
UNREACHABLE_PG = "postgresql+psycopg://u:secretpw@127.0.0.1:1/x"


def cli_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with plain, wide output: no colours, no wrapping of table titles or messages."""
    out = {k: v for k, v in env.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    out.update(COLUMNS="200", NO_COLOR="1")
    return out


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment with no SAGAFLOW_* settings from outside, its home under `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAFLOW_")}
    env["SAGAFLOW_HOME"] = str(home)
    env.update(extra)
    return env


def sagaflow(
    *args: str, env: Mapping[str, str], timeout: float = 120, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sagaflow", *args],
        env=cli_env(env),
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def json_of(result: subprocess.CompletedProcess[str]) -> Any:
    try:
        return json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"stdout is not JSON: {describe(result)}")


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, describe(result)
    assert "Traceback" not in result.stderr + result.stdout, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), describe(result)
    return lines[0]


# -- start ------------------------------------------------------------------------------------


def test_start_wait_json_prints_the_completed_saga(stack: Stack) -> None:
    result = sagaflow("start", "trip", "--data", '{"order": 7}', "--wait", "--json", env=stack.env)
    assert result.returncode == 0, describe(result)
    saga = json_of(result)
    assert saga["state"] == "completed"
    assert saga["saga_type"] == "trip"
    assert saga["data"] == {"order": 7}
    assert [s["name"] for s in saga["steps"]] == TRIP
    assert [s["status"] for s in saga["steps"]] == ["completed"] * 4
    assert saga["finished_at"] is not None and saga["error"] is None
    assert stack.store.get(saga["saga_id"]).state is SagaState.COMPLETED


def test_start_reads_the_input_from_stdin(stack: Stack) -> None:
    result = sagaflow(
        "start", "trip", "--data-file", "-", "--wait", "--json", env=stack.env, stdin='{"x": [1]}'
    )
    assert result.returncode == 0, describe(result)
    assert json_of(result)["data"] == {"x": [1]}


def test_start_wait_on_a_failing_saga_exits_1_and_shows_the_steps(stack: Stack) -> None:
    result = sagaflow("start", "trip", "--data", '{"fail_at":["b2"]}', "--wait", env=stack.env)
    assert result.returncode == 1, describe(result)
    match = re.search(rf"saga ({UUID_RE.pattern})", result.stdout)
    assert match, describe(result)
    for name in TRIP:
        assert re.search(rf"\b{name}\b", result.stdout), describe(result)
    assert "compensated" in result.stdout and "skipped" in result.stdout
    assert re.search(r"state:\s+failed", result.stdout), describe(result)
    saga = stack.store.get(match.group(1))
    assert saga.state is SagaState.FAILED
    assert saga.steps[1].status is StepStatus.FAILED


def test_start_without_wait_prints_just_the_id(stack: Stack) -> None:
    result = sagaflow("start", "trip", "--data", "{}", env=stack.env)
    assert result.returncode == 0, describe(result)
    assert UUID_RE.fullmatch(result.stdout.strip()), describe(result)
    assert result.stdout.count("\n") == 1
    assert stack.wait_one(result.stdout.strip()).state is SagaState.COMPLETED


def test_start_with_an_explicit_id_uses_it(stack: Stack) -> None:
    saga_id = f"cli-{uuid.uuid4().hex[:12]}"
    result = sagaflow("start", "trip", "--id", saga_id, "--json", env=stack.env)
    assert result.returncode == 0, describe(result)
    assert json_of(result) == {"saga_id": saga_id}
    assert stack.wait_one(saga_id).state is SagaState.COMPLETED


def test_start_wait_timeout_exits_5_and_says_where_the_saga_is(stack: Stack) -> None:
    # The orphan saga's second step waits on a queue nobody consumes.
    result = sagaflow("start", "orphan", "--wait", "--timeout", "3", env=stack.env)
    line = assert_one_line_error(result, 5)
    assert "not finished after 3s" in line


def test_start_with_input_that_is_not_json_is_bad_usage(tmp_path: Path) -> None:
    env = isolated_env(tmp_path / "home", SAGAFLOW_BROKER_URL="redis://127.0.0.1:1/0")
    line = assert_one_line_error(sagaflow("start", "trip", "--data", "not json", env=env), 2)
    assert "--data is not valid JSON" in line and "sagaflow start -h" in line


@pytest.mark.parametrize("data", ["[1,2]", '"text"', "3", "null"])
def test_start_with_input_that_is_not_an_object_is_bad_usage(tmp_path: Path, data: str) -> None:
    # An unreachable broker: had anything been sent, the exit code would be 4.
    env = isolated_env(tmp_path / "home", SAGAFLOW_BROKER_URL="redis://127.0.0.1:1/0")
    line = assert_one_line_error(sagaflow("start", "trip", "--data", data, env=env), 2)
    assert "--data: saga input must be a JSON object" in line


def test_start_into_a_store_without_tables_is_refused_with_the_upgrade_hint(
    tmp_path: Path,
) -> None:
    env = isolated_env(tmp_path / "home")  # the embedded store, never upgraded
    (tmp_path / "home").mkdir()
    line = assert_one_line_error(sagaflow("start", "trip", env=env), 4)
    assert "not started" in line and "sagaflow db upgrade" in line, line
    assert not list((tmp_path / "home").glob("broker/*.msg")), "a start went out anyway"


def test_start_wait_says_why_a_saga_did_not_complete(stack: Stack) -> None:
    result = sagaflow("start", "no-such-type", "--wait", env=stack.env)
    assert result.returncode == 1, describe(result)
    assert re.search(r"state:\s+rejected", result.stdout), describe(result)
    assert "error: UnknownSagaType: unknown saga type 'no-such-type'" in result.stdout, describe(
        result
    )


def test_an_id_prefix_names_the_saga_it_begins(stack: Stack) -> None:
    saga = stack.wait_one(stack.start("trip", {}))
    prefix = saga.saga_id[:8]  # as the demo prints it
    status = sagaflow("status", prefix, "--json", env=stack.env)
    assert json_of(status)["saga_id"] == saga.saga_id, describe(status)
    history = sagaflow("history", prefix, "--json", env=stack.env)
    rows = stack.store.history(saga.saga_id)
    assert [row["event"] for row in json_of(history)] == [r.event for r in rows], describe(history)
    common = f"twin-{uuid.uuid4().hex[:6]}"
    twins = [f"{common}-{n}" for n in range(2)]
    for twin in twins:
        stack.wait_one(stack.client.start("trip", {}, saga_id=twin))
    line = assert_one_line_error(sagaflow("status", common, env=stack.env), 2)
    assert f"{common!r} begins the ids of several sagas" in line
    assert all(twin in line for twin in twins), line
    # an operator action takes no prefix of an id a producer chose: order-1 is not order-12
    chosen = f"order-{uuid.uuid4().hex[:6]}-12"
    stack.wait_one(stack.client.start("trip", {}, saga_id=chosen))
    refused = assert_one_line_error(sagaflow("cancel", chosen[:-1], env=stack.env), 2)
    assert f"did you mean {chosen}?" in refused, refused
    assert json_of(sagaflow("status", chosen[:-1], "--json", env=stack.env))["saga_id"] == chosen


def test_start_that_nothing_can_keep_exits_4(tmp_path: Path) -> None:
    # No store, an outbox that cannot be created (its folder would be a file) and no broker.
    (tmp_path / "a-file").write_text("")
    env = isolated_env(tmp_path / "home", SAGAFLOW_OUTBOX_PATH=str(tmp_path / "a-file" / "o.db"))
    result = sagaflow("--broker-url", "redis://127.0.0.1:1/0", "start", "trip", env=env)
    line = assert_one_line_error(result, 4)
    assert "not started" in line and "start outbox" in line


# -- status -----------------------------------------------------------------------------------


def test_status_json_has_the_saga_and_its_steps(stack: Stack) -> None:
    saga_id = stack.start("trip", {"fail_at": ["a3"]})
    stack.wait_one(saga_id)
    result = sagaflow("status", saga_id, "--json", env=stack.env)
    assert result.returncode == 0, describe(result)
    saga = json_of(result)
    assert saga["saga_id"] == saga_id
    assert saga["saga_type"] == "trip"
    assert saga["state"] == "failed"
    assert saga["error"]["type"] == "StepRefused"
    assert [(s["position"], s["name"]) for s in saga["steps"]] == list(enumerate(TRIP))
    assert [s["status"] for s in saga["steps"]] == [
        "compensated",
        "compensated",
        "failed",
        "skipped",
    ]
    assert [s["queue"] for s in saga["steps"]] == ["svc_a", "svc_b", "svc_a", "svc_b"]
    assert saga["steps"][0]["compensated_at"] is not None


def test_status_shows_steps_state_and_error(stack: Stack) -> None:
    completed = stack.wait_one(stack.start("trip", {}))
    result = sagaflow("status", completed.saga_id, env=stack.env)
    assert result.returncode == 0, describe(result)
    assert f"saga {completed.saga_id}" in result.stdout
    for name in TRIP:
        assert re.search(rf"\b{name}\b", result.stdout), describe(result)
    assert re.search(r"type:\s+trip\s+state:\s+completed", result.stdout), describe(result)
    assert "error:" not in result.stdout

    failed = stack.wait_one(stack.start("trip", {"fail_at": ["a1"]}))
    result = sagaflow("status", failed.saga_id, env=stack.env)
    assert result.returncode == 0, describe(result)
    assert re.search(r"state:\s+failed", result.stdout), describe(result)
    assert "error: " in result.stdout and "step a1 refused" in result.stdout


def test_status_of_a_running_saga_says_which_step_it_waits_on(stack: Stack) -> None:
    saga_id = stack.start("orphan", {})
    stack.wait_dispatched(saga_id, 1)
    result = sagaflow("status", saga_id, env=stack.env)
    assert result.returncode == 0, describe(result)
    assert re.search(r"state:\s+pending", result.stdout), describe(result)
    waiting = "waiting on step 'lost' (executing): action task svc.act on queue 'nobody' for"
    assert waiting in result.stdout, describe(result)
    assert f"next: sagaflow cancel {saga_id} --reason" in result.stdout, describe(result)


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["history"],
        ["cancel"],
        ["retry"],
        ["mark-compensated", "{id}", "a1", "--reason", "done by hand"],
        ["resolve", "{id}", "a1", "--applied", "--reason", "seen in the ledger"],
    ],
    ids=lambda c: c[0],
)
def test_unknown_saga_exits_3_with_one_line(stack: Stack, command: list[str]) -> None:
    args = [a.replace("{id}", "no-such-saga-id") for a in command]
    if "{id}" not in command:
        args.append("no-such-saga-id")
    result = sagaflow(*args, env=stack.env)
    line = assert_one_line_error(result, 3)
    assert "no-such-saga-id" in line
    assert result.stdout == ""


@pytest.mark.parametrize(
    "command",
    [
        ["status", "some-id"],
        ["history", "some-id"],
        ["list"],
        ["db", "upgrade"],
        ["cancel", "some-id"],
        ["retry", "some-id"],
        ["mark-compensated", "some-id", "s1", "--reason", "by hand"],
        ["resolve", "some-id", "s1", "--not-applied", "--reason", "by hand"],
        ["recover"],
        ["dashboard"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_unreachable_store_exits_4_with_the_password_masked(
    tmp_path: Path, command: list[str]
) -> None:
    env = isolated_env(tmp_path / "home")
    result = sagaflow("--database-url", UNREACHABLE_PG, *command, env=env, timeout=60)
    assert result.returncode == 4, describe(result)
    assert "secretpw" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith("error: ")
    assert "u:***@127.0.0.1:1/x" in result.stderr


def test_store_without_tables_says_to_run_db_upgrade(tmp_path: Path) -> None:
    env = isolated_env(tmp_path / "home")
    (tmp_path / "home").mkdir()
    line = assert_one_line_error(sagaflow("status", "some-id", env=env), 4)
    assert "sagaflow db upgrade" in line


# -- list -------------------------------------------------------------------------------------


def list_json(stack: Stack, *args: str) -> list[dict[str, Any]]:
    result = sagaflow("list", "--json", *args, env=stack.env)
    assert result.returncode == 0, describe(result)
    rows: list[dict[str, Any]] = json_of(result)
    return rows


def test_list_json_contains_a_saga_just_finished(stack: Stack) -> None:
    saga = stack.wait_one(stack.start("trip", {"listed": True}))
    rows = list_json(stack)
    by_id = {r["saga_id"]: r for r in rows}
    assert saga.saga_id in by_id
    row = by_id[saga.saga_id]
    assert row["state"] == "completed" and row["saga_type"] == "trip"
    assert row["data"] == {"listed": True}
    assert "steps" not in row


def test_list_filters_by_state(stack: Stack) -> None:
    failed = stack.wait_one(stack.start("trip", {"fail_at": ["b4"]}))
    completed = stack.wait_one(stack.start("trip", {}))
    rows = list_json(stack, "--state", "failed", "--limit", "10000")
    assert rows and {r["state"] for r in rows} == {"failed"}
    ids = {r["saga_id"] for r in rows}
    assert failed.saga_id in ids and completed.saga_id not in ids


def test_list_filters_by_type(stack: Stack) -> None:
    dynamic = stack.wait_one(stack.start("dynamic", {"n": 1}))
    trip = stack.wait_one(stack.start("trip", {}))
    rows = list_json(stack, "--type", "dynamic", "--limit", "10000")
    assert rows and {r["saga_type"] for r in rows} == {"dynamic"}
    ids = {r["saga_id"] for r in rows}
    assert dynamic.saga_id in ids and trip.saga_id not in ids


def test_list_pages_with_limit_and_offset(stack: Stack) -> None:
    # Five new sagas: the page of four holds only sagas of this test, whatever ran before.
    new = [s.saga_id for s in stack.wait([stack.start("dynamic", {"n": 1}) for _ in range(5)])]
    first_four = [r["saga_id"] for r in list_json(stack, "--limit", "4")]
    assert len(first_four) == 4
    # Newest first: the sagas just recorded lead the list.
    assert set(first_four) <= set(new)
    assert [r["saga_id"] for r in list_json(stack, "--limit", "2")] == first_four[:2]
    assert [r["saga_id"] for r in list_json(stack, "--limit", "2", "--offset", "2")] == (
        first_four[2:]
    )

    result = sagaflow("list", "--limit", "2", env=stack.env)
    assert result.returncode == 0, describe(result)
    assert first_four[0] in result.stdout and first_four[1] in result.stdout
    assert first_four[2] not in result.stdout
    assert "next page: --offset 2" in result.stdout


def test_list_since_and_id_prefix(stack: Stack) -> None:
    saga = stack.wait_one(stack.start("dynamic", {"n": 1}))
    recent = {r["saga_id"] for r in list_json(stack, "--since", "10m", "--limit", "10000")}
    assert saga.saga_id in recent
    assert saga.created_at is not None
    later = (saga.created_at + timedelta(seconds=1)).isoformat()
    after = {r["saga_id"] for r in list_json(stack, "--since", later, "--limit", "10000")}
    assert saga.saga_id not in after
    same_day = saga.created_at.date().isoformat()  # a plain date means midnight UTC
    assert saga.saga_id in {
        r["saga_id"] for r in list_json(stack, "--since", same_day, "--limit", "10000")
    }
    assert [r["saga_id"] for r in list_json(stack, "--id-prefix", saga.saga_id[:12])] == [
        saga.saga_id
    ]
    assert list_json(stack, "--id-prefix", "%") == []  # a LIKE wildcard is taken literally

    bad = sagaflow("list", "--since", "last tuesday", env=stack.env)
    assert bad.returncode == 2, describe(bad)
    assert "neither a duration (30m, 2h, 1d, 1w) nor an ISO 8601 time" in bad.stderr


def test_recover_prints_what_it_did(stack: Stack) -> None:
    # A saga stalled for an hour on a step no worker takes: the sweep must send it again.
    saga_id = stack.start("orphan", {})
    stack.wait_dispatched(saga_id, 1)
    stack.age(saga_id, timedelta(hours=1))
    result = sagaflow("recover", "--older-than", "600", env=stack.env)
    assert result.returncode == 0, describe(result)
    summary = re.search(
        r"\d+ steps timed out, \d+ retriable steps retried, \d+ sagas past their deadline, "
        r"(\d+) sagas re-driven, \d+ events published",
        result.stdout,
    )
    assert summary, describe(result)
    line = f"re-drove {saga_id}: step 'lost' sent again (pending)"
    assert line in result.stdout, describe(result)
    redriven = result.stdout.count("re-drove ")
    assert int(summary.group(1)) == redriven >= 1, describe(result)
    # What it printed, it did: a second attempt of the step, recorded in the history.
    saga = stack.store.get(saga_id)
    assert saga.steps[1].attempts == 2
    assert "step_redriven" in [h.event for h in stack.store.history(saga_id)]


def test_tables_piped_into_80_columns_cut_nothing(tmp_path: Path) -> None:
    """Piped, a table keeps its natural width: no id or name cut, no error column folded to a
    character per line (COLUMNS=80 is what a pipe gets)."""
    from dataclasses import replace as with_

    from sagaflow.core.definitions import Step
    from sagaflow.core.machine import ErrorInfo, new_saga
    from tests.integration.test_store import NOW

    url = f"sqlite:///{tmp_path / 'home' / 'sagaflow.db'}"
    store = open_store(url)
    store.ensure_database()
    store.upgrade()
    steps = [Step("book_hotel_and_breakfast", "hotel.book_with_breakfast", "hotel.cancel")]
    error = ErrorInfo("CompensationRefused", "the hotel refused to cancel: " + "x" * 120)
    ids = [f"wide-{uuid.uuid4()}" for _ in range(5)]
    for saga_id in ids:
        saga = new_saga(saga_id, "a_saga_type_with_a_long_name", {}, steps, NOW)
        assert store.create(with_(saga, state=SagaState.FAILED, error=error))
    store.dispose()
    env = {**isolated_env(tmp_path / "home"), "COLUMNS": "80"}
    done = subprocess.run(
        [sys.executable, "-m", "sagaflow", "list"],
        env={k: v for k, v in env.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, describe(done)
    rows = [line for line in done.stdout.splitlines() if "wide-" in line]
    assert len(rows) == 5, describe(done)  # one line per saga, not one per character
    for saga_id in ids:
        (row,) = [line for line in rows if saga_id in line]  # every id whole
        assert "a_saga_type_with_a_long_name" in row and "x" * 120 in row, row
    header = next(line for line in done.stdout.splitlines() if "saga id" in line)
    for name in ("saga id", "type", "state", "created (UTC)", "took", "error"):
        assert name in header, header
    status = subprocess.run(
        [sys.executable, "-m", "sagaflow", "status", ids[0]],
        env={k: v for k, v in env.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "book_hotel_and_breakfast" in status.stdout, describe(status)  # not "book_hot…"


def test_definitions_named_from_the_working_directory_load_without_pythonpath(
    tmp_path: Path,
) -> None:
    """The `sagaflow` script (not `python -m`, which puts the directory on the path itself), run
    from the repository root with the README's SAGAFLOW_DEFINITIONS=workers.definitions."""
    script = Path(sys.executable).with_name("sagaflow")
    env = {k: v for k, v in isolated_env(tmp_path / "home").items() if k != "PYTHONPATH"}
    env["SAGAFLOW_DEFINITIONS"] = "workers.definitions"
    assert sagaflow("db", "upgrade", env=env).returncode == 0
    done = subprocess.run(
        [str(script), "recover", "--json"],
        env=cli_env(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, describe(done)
    assert "No module named" not in done.stdout + done.stderr, describe(done)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shell_completion_as_the_readme_installs_it(tmp_path: Path, shell: str) -> None:
    env = {**isolated_env(tmp_path / "home"), "_SAGAFLOW_COMPLETE": f"{shell}_source"}
    script = subprocess.run(
        [sys.executable, "-m", "sagaflow"], env=env, capture_output=True, text=True, timeout=60
    )
    assert script.returncode == 0 and "_SAGAFLOW_COMPLETE" in script.stdout, describe(script)
    asked = {**env, "_SAGAFLOW_COMPLETE": "bash_complete", "COMP_WORDS": "sagaflow sta"}
    words = subprocess.run(
        [sys.executable, "-m", "sagaflow"],
        env={**asked, "COMP_CWORD": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert words.stdout.split() == ["plain,stack", "plain,start", "plain,status"], describe(words)


def test_list_rejects_a_bad_limit(stack: Stack) -> None:
    result = sagaflow("list", "--limit", "0", env=stack.env)
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr


# -- history ----------------------------------------------------------------------------------


def test_history_json_lists_transitions_in_order(stack: Stack) -> None:
    saga_id = stack.wait_one(stack.start("trip", {})).saga_id
    result = sagaflow("history", saga_id, "--json", env=stack.env)
    assert result.returncode == 0, describe(result)
    rows = json_of(result)
    events = [r["event"] for r in rows]
    assert events[:2] == [HistoryEvent.SAGA_REQUESTED, HistoryEvent.SAGA_RECORDED]
    assert events[-1] == HistoryEvent.SAGA_COMPLETED
    assert rows[-1]["to_state"] == "completed"
    assert [r["step"] for r in rows if r["event"] == HistoryEvent.STEP_COMPLETED] == TRIP
    times = [r["at"] for r in rows]
    assert times == sorted(times)

    table = sagaflow("history", saga_id, env=stack.env)
    assert table.returncode == 0, describe(table)
    assert (
        HistoryEvent.SAGA_REQUESTED in table.stdout and HistoryEvent.SAGA_COMPLETED in table.stdout
    )


# -- db ---------------------------------------------------------------------------------------


def test_db_upgrade_creates_the_schema_and_can_run_again(tmp_path: Path) -> None:
    home = tmp_path / "new-home"
    env = isolated_env(home)
    url = f"sqlite:///{home / 'sagaflow.db'}"
    first = sagaflow("db", "upgrade", env=env)
    assert first.returncode == 0, describe(first)
    assert first.stdout.strip() == f"{url} at revision {head_revision()}"
    store = open_store(url)
    try:
        assert store.list_sagas() == []
    finally:
        store.dispose()
    second = sagaflow("db", "upgrade", env=env)
    assert second.returncode == 0, describe(second)
    assert second.stdout == first.stdout


# -- help and version -------------------------------------------------------------------------


def command_paths(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def test_every_command_is_covered_by_the_help_test() -> None:
    names = {" ".join(p) for p in command_paths()}
    assert {
        "",
        "start",
        "status",
        "list",
        "history",
        "cancel",
        "retry",
        "mark-compensated",
        "resolve",
        "recover",
        "db",
        "db upgrade",
        "worker",
        "demo",
        "dashboard",
        "stack",
    } <= names


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "sagaflow")
def test_help_of_every_command(tmp_path: Path, path: tuple[str, ...]) -> None:
    result = sagaflow(*path, "--help", env=isolated_env(tmp_path / "home"))
    assert result.returncode == 0, describe(result)
    assert result.stdout.startswith(f"Usage: {' '.join(('sagaflow', *path))} ")
    assert "Traceback" not in result.stderr


def test_version(tmp_path: Path) -> None:
    result = sagaflow("--version", env=isolated_env(tmp_path / "home"))
    assert result.returncode == 0, describe(result)
    assert re.search(r"\d+\.\d+\.\d+", result.stdout), describe(result)


# -- demo -------------------------------------------------------------------------------------


def processes_with_env(name: str, value: str) -> set[int]:
    """Pids of live processes whose environment has name=value (what the demo gives its workers)."""
    wanted = f"{name}={value}".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue  # gone, or not ours
        if wanted in environ:
            found.add(int(entry))
    return found


def test_demo_runs_end_to_end_and_leaves_no_workers(tmp_path: Path) -> None:
    home = (tmp_path / "demo").resolve()
    env = cli_env({k: v for k, v in os.environ.items() if not k.startswith("SAGAFLOW_")})
    out_path = tmp_path / "demo.out"
    with open(out_path, "w") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "sagaflow", "demo", "--sagas", "8", "--home", str(home)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        seen: set[int] = set()
        deadline = time.monotonic() + 180
        try:
            # The demo's workers carry its home in their environment: note them while it runs.
            while demo.poll() is None:
                seen |= processes_with_env("SAGAFLOW_HOME", str(home)) - {demo.pid}
                if time.monotonic() > deadline:
                    pytest.fail(f"demo still running after 180s:\n{out_path.read_text()}")
                time.sleep(0.05)
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait(timeout=30)
    output = out_path.read_text()
    assert demo.returncode == 0, output
    text = " ".join(output.split())  # rich wraps long lines
    assert "completed" in text and "failed" in text
    assert "every failed order was compensated" in text
    assert "8 sagas: 5 completed, 3 failed" in text

    store = open_store(f"sqlite:///{home / 'sagaflow.db'}")
    try:
        assert store.count_by_state() == {"completed": 5, "failed": 3}
    finally:
        store.dispose()

    assert len(seen) >= 4, f"the orchestrator and 3 services were never seen running: {seen}"
    still_running = processes_with_env("SAGAFLOW_HOME", str(home))
    assert not still_running, f"demo left worker processes running: {still_running}"
    assert not [pid for pid in seen if os.path.exists(f"/proc/{pid}/environ") and _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_worker_command_migrates_and_runs_the_orchestrator(tmp_path: Path) -> None:
    """`sagaflow worker --migrate` alone brings an empty embedded setup to running sagas."""
    import signal

    from sagaflow import SagaClient, SagaState
    from sagaflow.config import Settings
    from sagaflow.devstack.processes import WorkerGroup, WorkerSpec
    from tests.conftest import ROOT, poll, service_env

    home = tmp_path / "home"
    settings = Settings(home=home, definitions=("tests.sagas",))
    env = service_env(settings, f"sqlite:///{tmp_path / 'effects.db'}")
    orchestrator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sagaflow",
            "--home",
            str(home),
            "--definitions",
            "tests.sagas",
            "worker",
            "--pool",
            "solo",
            "--migrate",
        ],
        env={k: v for k, v in env.items() if not k.startswith("SAGAFLOW_")}
        | {"PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        with WorkerGroup(env, tmp_path / "logs", cwd=ROOT) as group:
            group.start(WorkerSpec("svc", "tests.services", ["svc_a", "svc_b"]))
            client = SagaClient(settings)
            group.wait_ready(client.app)

            def orchestrator_answers() -> bool:
                assert orchestrator.poll() is None, f"exited with {orchestrator.returncode}"
                replies = client.app.control.ping(timeout=2.0) or []
                return any(name.startswith(f"{settings.queue}@") for r in replies for name in r)

            # Its ping answer comes after the migration, so the saga is not started into a
            # store without tables.
            poll(orchestrator_answers, 60, lambda: "the orchestrator has not answered a ping")
            saga = client.wait(client.start("dynamic", {"n": 2}), timeout=60)
            assert saga.state is SagaState.COMPLETED
            client.close()
    finally:
        os.killpg(orchestrator.pid, signal.SIGTERM)
        orchestrator.wait(timeout=30)


def test_demo_runs_on_redis_and_postgres_with_two_variables(tmp_path: Path) -> None:
    import redis

    from tests.conftest import (
        create_postgres_database,
        drop_postgres_database,
        redis_url,
        require_redis,
    )

    require_redis()
    broker = redis_url(13)
    redis.Redis.from_url(broker).flushdb()
    database = create_postgres_database("sagaflow_demo")
    env = cli_env({k: v for k, v in os.environ.items() if not k.startswith("SAGAFLOW_")})
    env |= {"SAGAFLOW_BROKER_URL": broker, "SAGAFLOW_DATABASE_URL": database}
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sagaflow",
                "demo",
                "--sagas",
                "8",
                "--home",
                str(tmp_path / "demo"),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        text = " ".join(result.stdout.split())
        assert result.returncode == 0, result.stdout + result.stderr
        assert "every failed order was compensated" in text
        store = open_store(database)
        try:
            assert store.count_by_state() == {"completed": 5, "failed": 3}
        finally:
            store.dispose()
        assert not (tmp_path / "demo" / "sagaflow.db").exists()  # nothing went to SQLite
    finally:
        drop_postgres_database(database)
