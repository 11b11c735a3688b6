"""The benchmarks run and print their tables (tiny runs; no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.breakdown import PARTS, ROLES
from tests.conftest import ROOT, redis_url, require_redis


def run_benchmark(
    tmp_path: Path, script: str, *arguments: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """benchmarks/SCRIPT with these arguments, on its own Redis database; asserts it exited 0."""
    require_redis()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAFLOW_")}
    env |= {"BENCH_LOGS": str(tmp_path / "logs"), "BENCH_REDIS_URL": redis_url(12)}
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.timeout(600)  # three sagaflow contenders, two waiting out PostgreSQL's stats flushes
def test_compare_runs_and_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    result = run_benchmark(
        tmp_path,
        "compare.py",
        *("--sagas", "20", "--latency-runs", "3", "--prefill", "500", "--out", str(out)),
        *("--contenders", "sagaflow,sagaflow_sqlite,sagaflow_2orch,relay,chain", "--repeat", "2"),
        timeout=570,
    )
    for title in ("ratios (measured in the same run)", "targets", "finished sagas already stored"):
        assert title in result.stdout, result.stdout
    for label in (
        "sagaflow / chain",
        "sagaflow_sqlite / sagaflow",
        "2 orchestrators / 1",
        "sagaflow / relay",
        "relay / chain",
    ):
        assert label in result.stdout, result.stdout
    figures = json.loads(out.read_text())
    for name in ("sagaflow", "sagaflow_sqlite", "sagaflow_2orch", "relay", "chain"):
        assert figures[name]["throughput_per_s"] > 0
        assert figures[name]["throughput_per_s_fail"] > 0
        assert figures[name]["p50_ms"] > 0
    # The relay sends sagaflow's messages (a start, a step and its callback per step): the same
    # count, or it would not be sagaflow's floor.
    assert figures["relay"]["messages_per_saga"] == figures["sagaflow"]["messages_per_saga"]
    assert (
        figures["relay"]["messages_per_saga_fail"] == figures["sagaflow"]["messages_per_saga_fail"]
    )
    for name in ("sagaflow", "sagaflow_sqlite", "sagaflow_2orch", "relay"):
        assert figures[name]["messages_per_saga"] >= 10
        assert 0 < figures[name]["p50_ms_8"] <= figures[name]["p99_ms_8"]
    for name in ("sagaflow", "sagaflow_2orch"):
        assert figures[name]["sql_writes_per_saga"] >= 6  # a saga of 5 steps is durable
    assert "sql_commits_per_saga" not in figures["sagaflow_sqlite"]  # PostgreSQL's counter only
    # The second contender really ran two orchestrators, and both took work.
    tasks = figures["sagaflow_2orch"]["orchestrator_tasks"]
    assert sorted(node.split("@")[0] for node in tasks) == ["orchestrator1", "orchestrator2"]
    assert all(count > 0 for count in tasks.values()), tasks
    assert len(figures["sagaflow"]["orchestrator_tasks"]) == 1
    ratios = figures["ratios"]
    for key in (
        "sagaflow_vs_chain_throughput",
        "sqlite_vs_postgres_throughput",
        "two_vs_one_orchestrator_throughput",
        "sagaflow_sqlite_p99_vs_p50_8_in_flight",
        "sagaflow_vs_relay_throughput",
        "relay_vs_chain_p50",
    ):
        assert ratios[key] > 0
    # --repeat 2: a second round of sagaflow and the chain, each round's ratios and the median.
    assert "sagaflow against the chain, 2 rounds one after another" in result.stdout
    rounds = figures["rounds"]
    assert len(rounds) == 2
    assert rounds[0]["sagaflow"]["throughput_per_s"] == figures["sagaflow"]["throughput_per_s"]
    for figures_of_round in rounds:
        assert figures_of_round["chain"]["p50_ms"] > 0
        assert figures_of_round["ratios"]["throughput_per_s"] > 0
    assert ratios["sagaflow_vs_chain_throughput_per_s_median"] > 0
    (row,) = figures["scale"]
    assert row["stored_sagas"] == 500
    assert row["throughput_per_s"] > 0 and row["status_p50_ms"] > 0 and row["list_p50_ms"] > 0
    assert figures["machine"]["cores"] >= 1
    compare_holds_together(figures, sagas=20, latency_runs=3)


def compare_holds_together(figures: dict[str, Any], sagas: int, latency_runs: int) -> None:
    """Relations between compare.py's figures that hold on any machine, loaded or not."""
    assert figures["sagas"] == sagas and figures["latency_runs"] == latency_runs
    for name in ("sagaflow", "sagaflow_sqlite", "sagaflow_2orch", "relay", "chain"):
        row = figures[name]
        assert 0 < row["p50_ms"] <= row["p99_ms"] < 60_000, (name, row)
    # Messages per saga are counts, not timings: a start, 5 steps, their 5 callbacks and the
    # outcome event for sagaflow and the relay; the chain's 5 steps and its last task.
    for name in ("sagaflow", "sagaflow_sqlite", "sagaflow_2orch", "relay"):
        assert round(figures[name]["messages_per_saga"]) == 12, (name, figures[name])
    assert round(figures["chain"]["messages_per_saga"]) == 6, figures["chain"]
    # Every saga is durable in 8 commits (README); a second orchestrator adds none of its own.
    for name in ("sagaflow", "sagaflow_2orch"):
        for key in ("sql_commits_per_saga", "sql_commits_per_saga_fail"):
            assert 8 <= figures[name][key] < 9, (name, key, figures[name][key])
    # Every ratio is the quotient of the figures it names, as printed.
    ratios = figures["ratios"]
    for key, a, b, field in (
        ("sagaflow_vs_chain_throughput", "sagaflow", "chain", "throughput_per_s"),
        ("sagaflow_vs_chain_p50", "sagaflow", "chain", "p50_ms"),
        ("sagaflow_vs_relay_throughput", "sagaflow", "relay", "throughput_per_s"),
        ("relay_vs_chain_p50", "relay", "chain", "p50_ms"),
        ("sqlite_vs_postgres_throughput", "sagaflow_sqlite", "sagaflow", "throughput_per_s"),
        ("two_vs_one_orchestrator_throughput", "sagaflow_2orch", "sagaflow", "throughput_per_s"),
    ):
        assert ratios[key] == round(figures[a][field] / figures[b][field], 2), key
    p50, p99 = figures["sagaflow_sqlite"]["p50_ms_8"], figures["sagaflow_sqlite"]["p99_ms_8"]
    assert ratios["sagaflow_sqlite_p99_vs_p50_8_in_flight"] == round(p99 / p50, 2)
    for round_ in figures["rounds"]:
        for field, ratio in round_["ratios"].items():
            assert ratio == round(round_["sagaflow"][field] / round_["chain"][field], 2), round_
    by_round = sorted(r["ratios"]["throughput_per_s"] for r in figures["rounds"])
    assert by_round[0] <= ratios["sagaflow_vs_chain_throughput_per_s_median"] <= by_round[-1]
    (row,) = figures["scale"]
    assert row["status_p50_ms"] <= row["status_p99_ms"] and row["list_p50_ms"] <= row["list_p99_ms"]


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
    for reading in ("status", "list", "where_order", "where_customer"):
        assert 0 < row[f"{reading}_p50_ms"] <= row[f"{reading}_p99_ms"], (reading, row)
    assert row["index_build_seconds"] > 0


@pytest.mark.timeout(300)
def test_breakdown_follows_each_saga_through_its_tasks(tmp_path: Path) -> None:
    out = tmp_path / "breakdown.json"
    result = run_benchmark(
        tmp_path,
        "breakdown.py",
        *("--single", "3", "--sagas", "10", "--in-process", "5"),
        *("--contenders", "sagaflow,chain", "--out", str(out)),
        timeout=280,
    )
    assert "one saga at a time" in result.stdout and "CPU ms per saga" in result.stdout
    figures = json.loads(out.read_text())
    path, cpu = figures["path"], figures["cpu"]
    # Start, 5 steps and 5 outcome callbacks; the chain's 5 steps and its last task.
    assert path["sagaflow"]["tasks_on_path"] == 11
    assert path["chain"]["tasks_on_path"] == 6
    orchestrator = "orchestrator tasks before the last (store, state machine, next message)"
    assert path["sagaflow"][orchestrator] > 0 and path["chain"][orchestrator] == 0
    for name in ("sagaflow", "chain"):
        for part in (
            "producer, until its message is sent",
            "sending messages",
            "broker to worker (main process)",
            "worker main process to pool process",
        ):
            assert path[name][part] >= 0, f"{name}: {part} measured {path[name][part]}"
        assert path[name]["sending messages"] + path[name]["broker to worker (main process)"] > 0
        assert path[name]["step tasks (body, next message)"] > 0
    assert cpu["sagaflow"]["orchestrator worker, pool processes"] > 0
    assert cpu["sagaflow"]["PostgreSQL"] > 0
    assert cpu["chain"]["orchestrator worker, pool processes"] == 0
    assert cpu["chain"]["service worker, pool processes"] > 0
    # sagaflow's own work, in process: its start and one outcome per step.
    own = figures["in_process"]
    assert own["outcomes_per_saga"] == 5
    assert own["per_saga_ms"] > 0
    assert "sagaflow's own CPU ms, in process" in result.stdout
    breakdown_holds_together(figures, sagas_timed=3, sagas_at_once=10, sagas_in_process=5)


def breakdown_holds_together(
    figures: dict[str, Any], sagas_timed: int, sagas_at_once: int, sagas_in_process: int
) -> None:
    """Relations between breakdown.py's figures that hold on any machine, loaded or not."""
    for name, path in figures["path"].items():
        assert path["sagas"] == sagas_timed, (name, path)
        # The parts cut one timeline: they add up to the total, none is over it.
        assert path["total_ms"] == pytest.approx(sum(path[p] for p in PARTS), abs=0.011), path
        assert all(0 <= path[p] <= path["total_ms"] for p in PARTS), (name, path)
        assert 0 < path["p50_ms"] < 60_000, (name, path)
    cores = figures["machine"]["cores"]
    for name, cpu in figures["cpu"].items():
        assert cpu["sagas"] == sagas_at_once, (name, cpu)
        assert all(cpu[role] >= 0 for role in ROLES), (name, cpu)
        # Roles are rounded to 0.1 ms each, the total is not.
        assert cpu["total_ms"] == pytest.approx(sum(cpu[r] for r in ROLES), abs=0.4), cpu
        # CPU per saga, sagas per second and cores busy are one measurement three ways.
        per_saga = cpu["cores_busy"] * 1000 / cpu["throughput_per_s"]
        assert cpu["total_ms"] == pytest.approx(per_saga, rel=0.05, abs=0.5), (name, cpu)
        # /proc counts CPU in 10 ms ticks: a short run may seem to use a little over the cores.
        assert 0 < cpu["cores_busy"] <= cores + 0.25, (name, cpu)
        assert 0 < cpu["total_ms"] < 1000, (name, cpu)  # a second of CPU per no-op saga: broken
    own = figures["in_process"]
    assert own["sagas"] == sagas_in_process
    start = own["start (promote the request, send step 1)"]
    outcome = own["a step outcome (apply to the remembered saga, write, send the next)"]
    assert own["per_saga_ms"] == pytest.approx(start + 5 * outcome, abs=0.15), own
    assert 0 < start < 500 and 0 < outcome < 500, own
    # Its own work is part of what the orchestrator worker's pool processes spent per saga.
    assert own["per_saga_ms"] < figures["cpu"]["sagaflow"]["total_ms"], figures
