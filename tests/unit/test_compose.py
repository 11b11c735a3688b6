"""docker-compose.yml is checked as a file (no Docker engine here): every process it starts
names a module and queue that exist, every queue a step routes to has a worker, and its
environment speaks sagaflow's settings."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from sagaflow.config import Settings
from sagaflow.core.definitions import Saga, load_definitions

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def celery_command(service: dict[str, Any]) -> list[str] | None:
    command = service.get("command")
    if isinstance(command, list) and command and command[0] == "celery":
        return [str(c) for c in command]
    return None


def option(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


def consumed_queues(compose: dict[str, Any]) -> dict[str, str]:
    queues = {}
    for name, service in compose["services"].items():
        command = celery_command(service)
        if command and "worker" in command:
            for queue in (option(command, "-Q") or "").split(","):
                queues[queue] = name
    return queues


def test_every_celery_process_names_a_module_of_this_repository(compose: dict[str, Any]) -> None:
    commands = [c for s in compose["services"].values() if (c := celery_command(s))]
    assert len(commands) == 5  # orchestrator, 3 services, beat (Flower starts through sh)
    for command in commands:
        module = option(command, "-A")
        assert module is not None, command
        assert importlib.util.find_spec(module) is not None, f"{module} does not exist"


def test_every_queue_a_step_routes_to_has_a_worker(compose: dict[str, Any]) -> None:
    queues = consumed_queues(compose)
    assert queues.get(Settings().queue) == "orchestrator"
    registry = load_definitions("workers.definitions")
    samples = [{"voucher": ""}, {"voucher": "GIFT"}]
    routed = set()
    for saga_type in registry.saga_types:
        definition = registry.get(saga_type)
        for data in samples if not isinstance(definition, Saga) else [{}]:
            for step in definition.define_steps(data):
                routed |= {step.queue, step.compensation_queue or step.queue}
    assert routed == {"inventory", "payments", "shipping"}
    for queue in routed:
        assert queue in queues, f"no worker consumes {queue!r}"
    service_apps = {
        option(celery_command(compose["services"][name]) or [], "-A") for name in queues.values()
    }
    assert {"workers.inventory", "workers.payments", "workers.shipping"} <= service_apps


def cli_environment_variables() -> set[str]:
    """SAGAFLOW_* variables the `sagaflow` command's options read (e.g. the dashboard's)."""
    from sagaflow.ops.cli import cli

    names: set[str] = set()
    commands: list[click.Command] = [cli]
    while commands:
        command = commands.pop()
        names |= {p.envvar for p in command.params if isinstance(p.envvar, str)}
        if isinstance(command, click.Group):
            commands += command.commands.values()
    return names


def test_environment_uses_sagaflow_settings(compose: dict[str, Any]) -> None:
    known = set(Settings().to_env()) | cli_environment_variables()
    assert "SAGAFLOW_DASHBOARD_AUTH" in known
    for name, service in compose["services"].items():
        for key in service.get("environment") or {}:
            if key.startswith("SAGAFLOW_"):
                assert key in known, f"{name}: {key} is not a sagaflow setting"
    orchestrator_env = compose["services"]["orchestrator"]["environment"]
    assert orchestrator_env["SAGAFLOW_DEFINITIONS"] == "workers.definitions"
    assert orchestrator_env["SAGAFLOW_BROKER_URL"].startswith("redis://redis:")
    assert orchestrator_env["SAGAFLOW_DATABASE_URL"].startswith("postgresql+psycopg://")


def test_startup_order_and_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("redis", "postgres"):
        assert "healthcheck" in services[name]
    for name in (
        "orchestrator",
        "inventory",
        "payments",
        "shipping",
        "beat",
        "flower",
        "dashboard",
    ):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["install"]["condition"] == (
        "service_completed_successfully"
    )
    assert "db upgrade" in " ".join(services["migrate"]["command"])


def test_flower_has_no_default_password_and_is_not_published(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "${FLOWER_BASIC_AUTH:-}"
    script = " ".join(flower["command"])
    assert 'test -n "$$FLOWER_BASIC_AUTH"' in script and "exit 1" in script
    assert "celery -A sagaflow.worker flower" in script
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])


def test_every_worker_has_a_healthcheck_that_pings_itself(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        command = celery_command(service)
        if not command or "worker" not in command:
            continue
        node = option(command, "-n")
        assert node == f"{service['environment']['WORKER_NAME']}@%h", name
        check = " ".join(service["healthcheck"]["test"])
        assert "inspect ping -d $$WORKER_NAME@$$HOSTNAME" in check, name


def test_dashboard_needs_credentials_and_stays_local(compose: dict[str, Any]) -> None:
    dashboard = compose["services"]["dashboard"]
    assert dashboard["environment"]["SAGAFLOW_DASHBOARD_AUTH"] == "${SAGAFLOW_DASHBOARD_AUTH:-}"
    script = " ".join(dashboard["command"])
    assert 'test -n "$$SAGAFLOW_DASHBOARD_AUTH"' in script and "exit 1" in script
    assert "exec sagaflow dashboard --host 0.0.0.0 --port 8650" in script
    assert dashboard["ports"] == ["127.0.0.1:8650:8650"]
    assert "/healthz" in " ".join(dashboard["healthcheck"]["test"])
    assert dashboard["environment"]["SAGAFLOW_FLOWER_URL"].endswith(":5555")
