"""`sagaflow stack` run for real: every process started, a saga through them, a clean stop."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sagaflow.ops.cli import cli
from tests.acceptance.test_cli import cli_env, describe, isolated_env, sagaflow
from tests.acceptance.test_flower import PASSWORD, USER, get
from tests.conftest import (
    ROOT,
    create_postgres_database,
    drop_postgres_database,
    free_port,
    poll,
    redis_url,
    require_redis,
)

ORDER = {
    "order_id": "o-stack",
    "customer": "alice",
    "sku": "widget",
    "quantity": 1,
    "amount": 500,
    "country": "DE",
}
ROW = re.compile(r"^\W*([\w-]+)\s+│\s+(\d+)\s+│")  # "│ name │ pid │ ..." of the stack's table


class StackProcess:
    """`sagaflow stack` as a subprocess, its output in a file that is read while it runs."""

    def __init__(self, args: list[str], env: dict[str, str], out: Path) -> None:
        self.out = out
        self.file = out.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sagaflow", "stack", *args],
            env=cli_env({**env, "PYTHONUNBUFFERED": "1"}),
            cwd=ROOT,
            stdout=self.file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> dict[str, int]:
        """Wait for "stack ready"; returns the pid of each process from the printed table."""

        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"stack exited {self.process.returncode}:\n{self.output()}")
            return "stack ready" in self.output()

        poll(ready, timeout, lambda: f"stack not ready; output so far:\n{self.output()}", 0.1)
        pids = {}
        for line in self.output().splitlines():
            match = ROW.match(line)
            if match:
                pids[match.group(1)] = int(match.group(2))
        return pids

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"stack still running after {timeout:g}s:\n{self.output()}")

    def close(self) -> None:
        if self.process.poll() is None:  # a failed test: do not leave the stack behind
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        self.file.close()


@pytest.fixture
def run_stack() -> Iterator[list[StackProcess]]:
    started: list[StackProcess] = []
    yield started
    for stack in started:
        stack.close()


def process_groups() -> dict[int, list[int]]:
    """Process group id -> pids of the live (not zombie) processes in it."""
    groups: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _ppid, pgid = stat.rsplit(")", 1)[1].split()[:3]
        if state != "Z":
            groups.setdefault(int(pgid), []).append(int(entry))
    return groups


def assert_all_gone(pids: dict[str, int]) -> None:
    """Every process of the stack and everything in its process group (pool children) ended."""

    def left() -> dict[str, list[int]]:
        groups = process_groups()
        return {name: groups[pid] for name, pid in pids.items() if pid in groups}

    poll(lambda: not left(), 30, lambda: f"processes still running: {left()}")


def test_stack_on_redis_and_postgres_runs_a_saga_and_stops_cleanly(
    tmp_path: Path, run_stack: list[StackProcess]
) -> None:
    own_redis = redis_url(9)  # this file's own database
    require_redis(own_redis)
    redis.Redis.from_url(own_redis).flushdb()
    database_url = create_postgres_database()
    try:
        flower_port, dashboard_port = free_port(), free_port()
        env = isolated_env(
            tmp_path / "home",
            SAGAFLOW_BROKER_URL=own_redis,
            SAGAFLOW_DATABASE_URL=database_url,
            SAGAFLOW_RECOVER_INTERVAL="1",
            FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}",
        )
        args = ["-c", "1", f"--flower-port={flower_port}", f"--dashboard-port={dashboard_port}"]
        stack = StackProcess(args, env, tmp_path / "stack.out")
        run_stack.append(stack)
        pids = stack.wait_ready()
        output = stack.output()
        has_dashboard = "dashboard" in cli.commands
        expected = {"orchestrator", "inventory", "payments", "shipping", "beat", "flower"}
        expected |= {"dashboard"} if has_dashboard else set()
        assert set(pids) == expected, output
        assert "example data in" in output, output
        assert PASSWORD not in output

        started = sagaflow(
            "start", "order", "--data", json.dumps(ORDER), "--wait", "--json", env=env
        )
        assert started.returncode == 0, describe(started)
        assert json.loads(started.stdout)["state"] == "completed", describe(started)

        flower = f"http://127.0.0.1:{flower_port}"
        assert get(f"{flower}/api/workers", auth=False)[0] == 401
        # refresh=1 makes Flower ask every worker, 1 s each, just after the stack started.
        answers: list[tuple[int, str]] = []

        def flower_lists_workers() -> bool:
            answers.append(get(f"{flower}/api/workers?refresh=1"))
            return answers[-1][0] == 200

        poll(
            flower_lists_workers,
            30,
            lambda: f"Flower's /api/workers never answered 200: {answers[-1:]}",
        )
        if has_dashboard:
            poll(
                lambda: get(f"http://127.0.0.1:{dashboard_port}/", auth=False)[0] == 200,
                30,
                lambda: "the dashboard never answered 200",
            )
        # beat is wired to the broker: the orchestrator runs the periodic recovery task
        orchestrator_log = tmp_path / "home" / "stack-logs" / "orchestrator.log"
        poll(
            lambda: "sagaflow.recover" in orchestrator_log.read_text(),
            30,
            lambda: "beat's recover task never reached the orchestrator",
        )

        stack.process.send_signal(signal.SIGTERM)
        assert stack.wait_exit() == 0, stack.output()
        assert "stopped orchestrator, inventory" in stack.output(), stack.output()
        assert_all_gone(pids)
        assert "Warm shutdown" in orchestrator_log.read_text()
    finally:
        drop_postgres_database(database_url)


def test_stack_embedded_default_stops_everything_when_one_process_dies(
    tmp_path: Path, run_stack: list[StackProcess]
) -> None:
    """No servers (filesystem broker, SQLite under SAGAFLOW_HOME); then foreman's rule: one
    process gone, all stopped, exit 1, naming the one that died."""
    home = tmp_path / "home"
    env = isolated_env(home)
    env.pop("FLOWER_BASIC_AUTH", None)
    stack = StackProcess(["-c", "1", "--no-dashboard"], env, tmp_path / "stack.out")
    run_stack.append(stack)
    pids = stack.wait_ready()
    output = stack.output()
    assert {"orchestrator", "inventory", "payments", "shipping", "beat"} == set(pids), output
    assert f"store: sqlite:///{home / 'sagaflow.db'}" in output
    assert "Flower not started: set FLOWER_BASIC_AUTH" in output

    started = sagaflow(
        "--definitions=workers.definitions",
        "start",
        "order",
        "--data",
        json.dumps(ORDER),
        "--wait",
        "--json",
        env=env,
    )
    assert json.loads(started.stdout)["state"] == "completed", describe(started)

    os.kill(pids["payments"], signal.SIGKILL)
    assert stack.wait_exit() == 1, stack.output()
    output = stack.output()
    assert f"payments (pid {pids['payments']}) exited with code -9" in output, output
    assert str(home / "stack-logs" / "payments.log") in output, output
    assert "stopped orchestrator, inventory, shipping, beat" in output, output
    assert_all_gone(pids)


def test_stack_refuses_bad_services_before_starting_anything(tmp_path: Path) -> None:
    env = isolated_env(tmp_path / "home")
    bad = sagaflow("stack", "--service", "inventory", env=env)
    assert bad.returncode == 2, describe(bad)
    assert "NAME=MODULE[:QUEUE]" in bad.stderr, describe(bad)
    # own services need their saga definitions named
    own = sagaflow("stack", "--service", "billing=billing.tasks", env=env)
    assert own.returncode == 1, describe(own)
    assert "SAGAFLOW_DEFINITIONS" in own.stderr, describe(own)
    assert not (tmp_path / "home" / "stack-logs").exists()


def test_stack_that_cannot_start_a_process_says_why_and_stops_the_rest(
    tmp_path: Path, run_stack: list[StackProcess]
) -> None:
    home = tmp_path / "home"
    env = isolated_env(home, SAGAFLOW_DEFINITIONS="workers.definitions")
    env.pop("FLOWER_BASIC_AUTH", None)
    args = ["-c", "1", "--no-beat", "--no-dashboard", "--service", "billing=no_such_module"]
    stack = StackProcess(args, env, tmp_path / "stack.out")
    run_stack.append(stack)
    assert stack.wait_exit() == 1, stack.output()
    output = stack.output()
    assert "stack not started" in output and "'billing' exited with code" in output, output
    assert "no_such_module" in output, output  # the end of its log, line by line
    assert "stopped orchestrator" in output, output


def test_stack_refuses_flower_without_a_password(tmp_path: Path) -> None:
    env = isolated_env(tmp_path / "home")
    env.pop("FLOWER_BASIC_AUTH", None)
    result = sagaflow("stack", "--flower-port", str(free_port()), env=env)
    assert result.returncode == 1, describe(result)
    assert "FLOWER_BASIC_AUTH" in result.stderr, describe(result)
    assert not (tmp_path / "home" / "stack-logs").exists()
