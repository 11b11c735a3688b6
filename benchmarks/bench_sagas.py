"""The benchmark saga: five no-op steps, each with a compensation, on one service queue."""

from sagaflow import Saga, Step

bench5 = Saga(
    "bench5",
    steps=[Step(f"s{i}", "bench.step", "bench.undo", queue="bench") for i in range(1, 6)],
)
