"""benchmarks/forged_flood.py runs and prints its figures (a small flood; no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from sagaflow.store.protocol import IGNORED_IN_HISTORY
from tests.acceptance.test_benchmark_smoke import run_benchmark


def test_forged_flood_keeps_the_history_bounded_and_counts_every_callback(
    tmp_path: Path,
) -> None:
    out = tmp_path / "flood.json"
    result = run_benchmark(
        tmp_path,
        "forged_flood.py",
        *("--count", "300", "--backlog", "100", "--sample-every", "0.5", "--out", str(out)),
        timeout=280,
    )
    assert "300 forged callbacks against one saga" in result.stdout, result.stdout
    figures = json.loads(out.read_text())
    assert figures["ignored_count"] == 300
    assert figures["outcome_ignored_rows"] == IGNORED_IN_HISTORY
    assert figures["history_rows"] == figures["history_rows_before"] + IGNORED_IN_HISTORY
    assert figures["saga_state"] == "pending"
    assert sorted(c["outcome"] for c in figures["ignored_by_step"]) == ["failed", "succeeded"]
    assert figures["rss_mb_before"] > 0 and figures["rss_mb_after"] > 0
    assert len(figures["samples"]) >= 2
    # At the benchmark's log level (warning): the one line saying the rest are only counted.
    assert figures["log_lines_about_the_saga"] == 1
