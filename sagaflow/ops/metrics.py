"""Saga-level Prometheus metrics, computed from the saga store (served by `sagaflow dashboard`).

Counters start from one snapshot of the store when the first scrape comes, then follow the
append-only history from that snapshot's last row: each scrape reads only what happened since
the previous one. History rows younger than `lag` seconds wait for the next scrape, so a
transaction that took a lower id but committed a moment later is not skipped. Step durations are
observed from the history too, so the histograms hold the steps finished since this process
started. Gauges (in flight, oldest stuck saga, waiting for an operator) are read on every scrape
from the state index.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sagaflow.core.vocabulary import HistoryEvent, Phase, SagaState
from sagaflow.errors import StoreUnavailable
from sagaflow.store.protocol import SagaStore, utcnow
from sagaflow.store.stats import HistoryFact, StoreStats

DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

# History events that end a phase of a step: (phase, outcome). Keyed by str: a row's event.
_STEP_OUTCOMES: dict[str, tuple[Phase, str]] = {
    HistoryEvent.STEP_COMPLETED: (Phase.ACTION, "succeeded"),
    HistoryEvent.STEP_FAILED: (Phase.ACTION, "failed"),
    HistoryEvent.STEP_COMPENSATED: (Phase.COMPENSATION, "succeeded"),
    HistoryEvent.COMPENSATION_FAILED: (Phase.COMPENSATION, "failed"),
}
NEEDS_OPERATOR = tuple(s for s in SagaState if s.needs_operator)


def _is_terminal(state: str) -> bool:
    try:
        return SagaState(state).is_terminal
    except ValueError:
        return False


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        cumulative, out = 0, []
        for bound, count in zip((*DURATION_BUCKETS, float("inf")), self.counts, strict=True):
            cumulative += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
        return out


class SagaMetrics(Collector):
    """A prometheus_client collector; register it on a CollectorRegistry."""

    def __init__(self, store: SagaStore, *, lag: float = 5.0) -> None:
        self.stats = StoreStats(store)
        self.lag = timedelta(seconds=lag)
        self._lock = threading.Lock()
        self._cursor: int | None = None
        self._started: dict[str, int] = {}
        self._finished: dict[tuple[str, str], int] = {}
        self._durations: dict[tuple[str, str, str, str], _Histogram] = {}

    def refresh(self, now: datetime | None = None) -> None:
        """Bring the counters up to the history rows older than `lag`."""
        now = now or utcnow()
        with self._lock:
            if self._cursor is None:
                counts, self._cursor = self.stats.counts_by_type_and_state()
                for (saga_type, state), n in counts.items():
                    self._started[saga_type] = self._started.get(saga_type, 0) + n
                    if _is_terminal(state):
                        self._finished[saga_type, state] = n
            cutoff = now - self.lag
            while True:
                facts = self.stats.history_after(self._cursor)
                for fact in facts:
                    if fact.at > cutoff:
                        return
                    self._count(fact)
                    self._cursor = fact.id
                if len(facts) < 5000:
                    return

    def _count(self, fact: HistoryFact) -> None:
        if fact.event == HistoryEvent.OUTCOME_IGNORED:
            return  # a note on the saga, not a change of its state
        if fact.from_state is None:  # the row that recorded the saga (requested or rejected)
            self._started[fact.saga_type] = self._started.get(fact.saga_type, 0) + 1
        if fact.from_state != fact.to_state and _is_terminal(fact.to_state):
            key = (fact.saga_type, fact.to_state)
            self._finished[key] = self._finished.get(key, 0) + 1
        outcome = _STEP_OUTCOMES.get(fact.event)
        if outcome is None or fact.step is None:
            return
        phase, result = outcome
        began = fact.step_started_at if phase is Phase.ACTION else fact.compensation_started_at
        if began is None or began > fact.at:  # the step was dispatched again since
            return
        key4 = (fact.saga_type, fact.step, phase.value, result)
        self._durations.setdefault(key4, _Histogram()).observe((fact.at - began).total_seconds())

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        up = GaugeMetricFamily("sagaflow_store_up", "1 if the saga store answered this scrape.")
        try:
            self.refresh(now)
            running = self.stats.running()
            operator = self.stats.count_in_states(NEEDS_OPERATOR)
        except StoreUnavailable:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        started = CounterMetricFamily(
            "sagaflow_sagas_started",
            "Sagas recorded (started or rejected), by type.",
            labels=["saga_type"],
        )
        finished = CounterMetricFamily(
            "sagaflow_sagas_finished",
            "Sagas that reached a terminal state (completed, failed, compensation_failed, "
            "cancelled, rejected), by type and state.",
            labels=["saga_type", "state"],
        )
        durations = HistogramMetricFamily(
            "sagaflow_step_duration_seconds",
            "From dispatch to outcome, per step phase, for steps finished since this process "
            "started.",
            labels=["saga_type", "step", "phase", "outcome"],
        )
        with self._lock:
            for saga_type, n in sorted(self._started.items()):
                started.add_metric([saga_type], n)
            for (saga_type, state), n in sorted(self._finished.items()):
                finished.add_metric([saga_type, state], n)
            for labels, histogram in sorted(self._durations.items()):
                durations.add_metric(list(labels), histogram.buckets(), histogram.total)
        yield started
        yield finished
        yield durations

        in_flight = GaugeMetricFamily(
            "sagaflow_sagas_in_flight",
            "Sagas running now (started, pending or compensating), by type and state.",
            labels=["saga_type", "state"],
        )
        stuck = GaugeMetricFamily(
            "sagaflow_oldest_running_saga_age_seconds",
            "Seconds since the running saga that moved least recently last moved, by type.",
            labels=["saga_type"],
        )
        oldest: dict[str, datetime] = {}
        for group in running:
            in_flight.add_metric([group.saga_type, group.state], group.count)
            if group.oldest_progress_at is not None:
                previous = oldest.get(group.saga_type)
                if previous is None or group.oldest_progress_at < previous:
                    oldest[group.saga_type] = group.oldest_progress_at
        for saga_type, moment in sorted(oldest.items()):
            stuck.add_metric([saga_type], max(0.0, (now - moment).total_seconds()))
        waiting = GaugeMetricFamily(
            "sagaflow_sagas_needing_operator",
            "Sagas stopped until an operator acts (compensation_failed, escalated), by type.",
            labels=["saga_type"],
        )
        for saga_type, n in sorted(operator.items()):
            waiting.add_metric([saga_type], n)
        yield in_flight
        yield stuck
        yield waiting
