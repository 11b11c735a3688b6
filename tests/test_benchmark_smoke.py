"""The comparison benchmark runs and prints its table (a tiny run; no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, require_redis


def test_compare_runs_and_writes_its_figures(tmp_path: Path) -> None:
    require_redis()
    out = tmp_path / "latest.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAFLOW_")}
    env |= {"BENCH_LOGS": str(tmp_path / "logs"), "BENCH_REDIS_URL": "redis://127.0.0.1:6379/12"}
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/compare.py",
            "--sagas",
            "20",
            "--latency-runs",
            "3",
            "--contenders",
            "sagaflow,chain",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ratios (sagaflow / other)" in result.stdout
    figures = json.loads(out.read_text())
    for name in ("sagaflow", "chain"):
        assert figures[name]["throughput_per_s"] > 0
        assert figures[name]["p50_ms"] > 0
    assert figures["sagaflow"]["sql_writes_per_saga"] >= 6  # a saga of 5 steps is durable
    assert figures["sagaflow"]["messages_per_saga"] >= 10
    assert figures["machine"]["cores"] >= 1


def test_scale_runs_and_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/scale.py", "--sizes", "500", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["stored_sagas"] == 500 and row["status_p50_ms"] > 0 and row["list_p50_ms"] > 0
