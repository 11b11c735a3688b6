"""`pip install` is enough: the wheel, installed in a fresh venv outside the repository, runs the
demo."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


# Building and installing into a new venv is slow on a loaded machine (6 min seen).
@pytest.mark.timeout(1200)
def test_the_wheel_runs_the_demo_from_a_fresh_venv(tmp_path: Path) -> None:
    # Nothing of the repository or of this run's venv may leak into the installed one.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SAGAFLOW_", "PYTHON", "VIRTUAL_ENV", "WORKERS_"))
    }
    env.update(COLUMNS="200", NO_COLOR="1")
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist)], ROOT, env, 600)
    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sagaflow/example/payments.py" in names and "sagaflow/py.typed" in names
    assert not [n for n in names if n.startswith("workers/")], "a top-level workers package"
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: MIT" in text
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    run([base, "-m", "venv", str(venv)], tmp_path, env, 300)
    run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], tmp_path, env, 600)
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert not (site / "workers").exists()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    demo = [str(venv / "bin" / "sagaflow"), "demo", "--sagas", "4", "--home", str(tmp_path / "h")]
    output = " ".join(run(demo, elsewhere, env, 300).split())
    assert "every failed order was compensated" in output, output

    # A service's install: the dashboard's dependencies are an extra, asked for by name.
    assert not (site / "flask").exists() and not (site / "waitress").exists()
    done = subprocess.run(
        [str(venv / "bin" / "sagaflow"), "--home", str(tmp_path / "h"), "dashboard"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "celery-sagaflow[dashboard]" in done.stderr and "Traceback" not in done.stderr
