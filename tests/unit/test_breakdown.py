"""benchmarks/breakdown.py's critical path, on probe records a loaded machine produces."""

from __future__ import annotations

import pytest

from benchmarks.breakdown import (
    BROKER,
    LAST,
    POOL,
    PRODUCER,
    SENDING,
    STEPS,
    Row,
    critical_path,
    saga_windows,
    task_marks,
)

BENCH, STEP_MAIN, STEP_POOL = 1, 2, 3
MS = 1_000_000


def hop(task_id: str, sender: int, at: dict[str, float]) -> list[Row]:
    """The records of one task sent by `sender` and run by the step worker's pool process."""
    pids = {"publish": sender, "published": sender, "received": STEP_MAIN}
    return [
        (int(ms * MS), pids.get(kind, STEP_POOL), kind, "bench.step", task_id)
        for kind, ms in at.items()
    ]


def loaded_run() -> list[Row]:
    """One saga of two tasks, as a busy machine records it: the producer is descheduled after
    its write, so the worker receives the message (at 3) before the producer's `published` (7);
    the second task's sender records `published` (60) after the saga is already done (50)."""
    rows = [(0, BENCH, "start", "-", "-"), (50 * MS, BENCH, "done", "-", "-")]
    rows += hop("t1", BENCH, {"publish": 1, "published": 7, "received": 3, "run": 4, "ran": 11})
    rows += hop(
        "t2", STEP_POOL, {"publish": 10, "published": 60, "received": 12, "run": 15, "ran": 40}
    )
    return sorted(rows)


def test_no_part_is_negative_and_the_parts_add_up_to_the_saga() -> None:
    rows = loaded_run()
    (window,) = saga_windows(rows)
    assert window == (0, 50 * MS)
    parts, hops = critical_path(window, task_marks(rows))
    assert hops == 2
    assert all(value >= 0 for value in parts.values()), parts
    assert sum(parts.values()) == pytest.approx(50)
    assert parts[PRODUCER] == pytest.approx(1)
    # Each send ends when the worker has the message, whichever mark says so first.
    assert parts[SENDING] == pytest.approx((3 - 1) + (12 - 10))
    assert parts[BROKER] == pytest.approx(0)
    assert parts[POOL] == pytest.approx((4 - 3) + (15 - 12))
    assert parts[STEPS] == pytest.approx(10 - 4)
    assert parts[LAST] == pytest.approx(50 - 15)


def test_a_mark_before_its_cause_is_refused_not_clipped() -> None:
    rows = [r for r in loaded_run() if not (r[4] == "t1" and r[2] == "run")]
    rows.append((2 * MS, STEP_POOL, "run", "bench.step", "t1"))  # run before it was received
    with pytest.raises(RuntimeError, match="before the one it follows"):
        critical_path(saga_windows(rows)[0], task_marks(sorted(rows)))
