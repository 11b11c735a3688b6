"""The repository keeps its promises to a new user: CI runs exactly the README's test command."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [b.strip() for b in blocks]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = next(c for c in readme_commands() if "pytest" in c)
    assert test_command.startswith("python3 -m venv")
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_first_command_installs_and_runs_the_demo() -> None:
    demo_command = readme_commands()[0]
    assert "pip install" in demo_command and demo_command.endswith("sagaflow demo")


def _ci_checks(tmp_path: Path, exit_codes: dict[str, int]) -> subprocess.CompletedProcess[str]:
    """The steps of .ci/run after the services are up, run with stand-ins for the tools.

    Each stand-in logs its arguments and exits with the code given for its name ("pytest" for
    `python -m pytest`), so what the script does with each exit code is what is checked.
    """
    script = (ROOT / ".ci" / "run").read_text()
    checks = script[script.index("# Every step below must pass") :]
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "log"
    tools = {"ruff": "ruff", "mypy": "mypy", "pip": "pip", "python3": "python3", "python": "pytest"}
    for name, tool in tools.items():
        stand_in = bin_dir / name
        stand_in.write_text(
            f'#!/bin/sh\necho "{name} $*" >> {log}\nexit {exit_codes.get(tool, 0)}\n'
        )
        stand_in.chmod(0o755)
    run = tmp_path / "run"
    run.write_text("set -euo pipefail\n" + checks)
    return subprocess.run(
        ["bash", str(run)],
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ci_runs_every_check_then_the_layer_test_then_the_suite(tmp_path: Path) -> None:
    done = _ci_checks(tmp_path, {})
    assert done.returncode == 0, done.stderr
    ran = (tmp_path / "log").read_text().splitlines()
    checks = [line for line in ran if not line.startswith(("pip", "python3"))]
    assert checks == [
        "ruff check .",
        "ruff format --check .",
        "mypy --strict sagaflow",
        "python -m pytest -q tests/unit/test_layers.py",
        "python -m pytest -n 2",
    ]


@pytest.mark.parametrize("tool", ["ruff", "mypy", "pytest"])
def test_ci_fails_when_a_check_fails(tmp_path: Path, tool: str) -> None:
    done = _ci_checks(tmp_path, {tool: 1})
    assert done.returncode == 1
    assert "failed with exit code 1" in done.stderr


def test_ci_fails_when_pytest_collects_no_tests(tmp_path: Path) -> None:
    done = _ci_checks(tmp_path, {"pytest": 5})
    assert done.returncode == 5
    assert "the layer test failed with exit code 5: pytest collected no tests" in done.stderr
    assert "python -m pytest\n" not in (tmp_path / "log").read_text()  # stopped before the suite
