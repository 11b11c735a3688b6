"""benchmarks/forged_flood.py runs and prints its figures (a small flood; no timing asserted)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

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
    flood_holds_together(figures, count=300, backlog=100)
    # At the benchmark's log level (warning): the one line saying the rest are only counted.
    assert figures["log_lines_about_the_saga"] == 1


def flood_holds_together(figures: dict[str, Any], count: int, backlog: int) -> None:
    """Relations between forged_flood.py's figures that any run, on any machine, keeps."""
    assert figures["forged_callbacks"] == count
    # Half success callbacks, half failures, every one counted against the held step.
    by_step = {(c["step"], c["outcome"]): c["count"] for c in figures["ignored_by_step"]}
    assert by_step == {("held", "succeeded"): count // 2, ("held", "failed"): count - count // 2}
    assert figures["history_rows_bound"] == figures["history_rows_before"] + IGNORED_IN_HISTORY
    assert figures["history_rows"] <= figures["history_rows_bound"]
    # Ignored means ignored: the saga did not move.
    assert figures["saga_version"] == figures["saga_version_before"]
    # The rate is the count over the time it took (both rounded to 0.1).
    elapsed, rate = figures["elapsed_s"], figures["callbacks_per_s"]
    assert count / (elapsed + 0.05) - 0.05 <= rate <= count / max(elapsed - 0.05, 0.01) + 0.05
    samples = figures["samples"]
    assert samples[0] == {"sent": 0, "ignored": 0, "rss_mb": figures["rss_mb_before"]}
    for earlier, later in itertools.pairwise(samples):
        assert earlier["sent"] <= later["sent"] and earlier["ignored"] <= later["ignored"]
    # The sender never runs more than the backlog ahead of the orchestrator.
    assert all(0 <= s["sent"] - s["ignored"] <= backlog for s in samples), samples
    assert all(s["sent"] <= count for s in samples)
    assert figures["rss_mb_during_max"] == max(s["rss_mb"] for s in samples[1:])
    for moment in ("before", "after"):
        by_process = figures[f"rss_kb_{moment}"]
        assert figures[f"rss_mb_{moment}"] == round(sum(by_process.values()) / 1024, 1)
        assert len(by_process) == 3, by_process  # prefork -c 2: the main process and its pool
        assert all(10_000 < kb < 2_000_000 for kb in by_process.values()), by_process
    assert figures["log_lines_about_the_saga"] <= figures["log_lines_added"]
