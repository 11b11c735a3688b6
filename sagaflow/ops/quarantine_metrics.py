"""The quarantine in /metrics: how many refused messages wait for an operator, by reason."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sagaflow.errors import StoreUnavailable
from sagaflow.store.protocol import SagaStore
from sagaflow.store.quarantine import QuarantineStore

logger = logging.getLogger(__name__)


class QuarantineMetrics(Collector):
    """`sagaflow_quarantined_messages{reason}`, read from the store on every scrape."""

    def __init__(self, store: SagaStore) -> None:
        self.records = QuarantineStore(store)

    def collect(self) -> Iterator[Metric]:
        try:
            counts = self.records.count_by_reason()
        except StoreUnavailable as exc:
            logger.warning("quarantine metrics skipped: %s", exc)
            return
        gauge = GaugeMetricFamily(
            "sagaflow_quarantined_messages",
            "Messages workers refused and kept for an operator (sagaflow quarantine list)",
            labels=["reason"],
        )
        for reason, count in sorted(counts.items()):
            gauge.add_metric([reason], float(count))
        yield gauge
