"""The repository keeps its promises to a new user: CI runs exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

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
