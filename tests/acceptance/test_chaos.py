"""The chaos run, CI-sized: sagas survive killed workers, a Redis flushed and restarted, and a
store outage overlapping the loss of every message.

benchmarks/chaos.py starts its own redis-server on a free port and its own PostgreSQL database,
so it disturbs no other test's broker or store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SAGAS = 200
# One of each kind: service worker, pool child, orchestrator, its child, Redis flushed, Redis
# restarted, PostgreSQL dropping the store's connections, the store away while Redis is lost.
FAULTS = 8
# Its plan strikes the store outage just after the Redis restart, while the sweep still re-drives
# what that lost, and ends with faults that stall nothing: the run takes as long as with 7 kinds.
SEED = 20261187


@pytest.mark.timeout(600)
def test_no_saga_lost_or_doubled_under_faults(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("the chaos run needs redis-server on PATH (it starts its own)")
    out = tmp_path / "chaos.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAFLOW_")}
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/chaos.py",
            "--sagas",
            str(SAGAS),
            "--faults",
            str(FAULTS),
            "--seed",
            str(SEED),
            "--self-check",
            "--timeout",
            "240",
            "--logs",
            str(tmp_path / "run"),
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=580,
    )
    report = result.stdout[-6000:] + result.stderr[-3000:]
    assert out.exists(), report
    figures = json.loads(out.read_text())
    assert figures["violations"] == [], report
    assert figures["not_terminal_detail"] == [], report
    assert figures["terminal"] == SAGAS, report
    assert figures["faults_injected"] == FAULTS, report
    assert figures["unplanned_exits"] == [], report  # no worker died of a fault it was not dealt
    assert set(figures["faults_by_kind"]) == {
        "service_worker",
        "service_child",
        "orchestrator",
        "orchestrator_child",
        "redis_flush",
        "redis_restart",
        "postgres_drop",
        "store_outage_redis_loss",
    }
    # Starts were made while the store was away, and every one given an id was recorded.
    assert figures["starts_in_outbox"] > 0, report
    assert figures["starts_lost"] == 0 and figures["outbox_left"] == 0, report
    # The demo's mix: some orders fail on purpose, so compensation ran under the faults too.
    assert figures["completed"] > 0 and figures["failed"] > 0, report
    # The audit is not blind: a deleted effect row is flagged.
    assert figures["self_check"].startswith("passed"), report
    assert result.returncode == 0, report
