"""Read-only aggregate queries over the saga store, for the metrics.

Every query here runs on an index or reads only history rows newer than a cursor, so its cost
follows the number of running sagas and the work done since the last call, not the number of
sagas ever stored (the one exception, `counts_by_type_and_state`, runs once per process, at
the first scrape).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from sagaflow.core.definitions import SagaState
from sagaflow.store.protocol import SagaStore
from sagaflow.store.rows import aware as _aware
from sagaflow.store.schema import history, sagas, steps

RUNNING_STATES = (
    SagaState.REQUESTED,
    SagaState.STARTED,
    SagaState.PENDING,
    SagaState.COMPENSATING,
)


@dataclass(frozen=True)
class RunningGroup:
    """Running sagas of one type in one state, and when the least recently moved one last did."""

    saga_type: str
    state: str
    count: int
    oldest_progress_at: datetime | None


@dataclass(frozen=True)
class HistoryFact:
    """One history row with what metrics need beside it: the saga's type and the step's start."""

    id: int
    at: datetime
    saga_type: str
    event: str
    from_state: str | None
    to_state: str
    step: str | None
    step_started_at: datetime | None
    compensation_started_at: datetime | None


class StoreStats:
    def __init__(self, store: SagaStore) -> None:
        self.store = store

    def counts_by_type_and_state(self) -> tuple[dict[tuple[str, str], int], int]:
        """Sagas by (type, state), and the last history id those counts include.

        Read in one snapshot, so history rows after the returned id are exactly the changes the
        counts do not yet include.
        """
        with self.store.snapshot() as conn:
            last_id = conn.execute(sa.select(sa.func.max(history.c.id))).scalar()
            rows = conn.execute(
                sa.select(sagas.c.saga_type, sagas.c.state, sa.func.count()).group_by(
                    sagas.c.saga_type, sagas.c.state
                )
            ).all()
        return {(t, s): int(n) for t, s, n in rows}, int(last_id or 0)

    def running(self) -> list[RunningGroup]:
        """Per type and running state: how many, and the oldest last progress (the state and
        updated_at index answers this)."""
        query = (
            sa.select(
                sagas.c.saga_type,
                sagas.c.state,
                sa.func.count(),
                sa.func.min(sagas.c.updated_at),
            )
            .where(sagas.c.state.in_([s.value for s in RUNNING_STATES]))
            .group_by(sagas.c.saga_type, sagas.c.state)
        )
        with self.store.connect() as conn:
            rows = conn.execute(query).all()
        return [RunningGroup(t, s, int(n), _aware(oldest)) for t, s, n, oldest in rows]

    def count_in_states(self, states: Sequence[SagaState]) -> dict[str, int]:
        """Per type, sagas in any of `states` (e.g. those waiting for an operator)."""
        query = (
            sa.select(sagas.c.saga_type, sa.func.count())
            .where(sagas.c.state.in_([s.value for s in states]))
            .group_by(sagas.c.saga_type)
        )
        with self.store.connect() as conn:
            return {t: int(n) for t, n in conn.execute(query).all()}

    def history_after(self, after_id: int, limit: int = 5000) -> list[HistoryFact]:
        """History rows with id > after_id, in id order, with their saga's type and step times."""
        step = steps.alias("step")
        query = (
            sa.select(
                history.c.id,
                history.c.at,
                sagas.c.saga_type,
                history.c.event,
                history.c.from_state,
                history.c.to_state,
                history.c.step,
                step.c.started_at,
                step.c.compensation_started_at,
            )
            .join(sagas, sagas.c.id == history.c.saga_id)
            .outerjoin(
                step, sa.and_(step.c.saga_id == history.c.saga_id, step.c.name == history.c.step)
            )
            .where(history.c.id > after_id)
            .order_by(history.c.id)
            .limit(limit)
        )
        with self.store.connect() as conn:
            rows = conn.execute(query).all()
        return [
            HistoryFact(
                id=int(r[0]),
                at=_aware(r[1]) or r[1],
                saga_type=r[2],
                event=r[3],
                from_state=r[4],
                to_state=r[5],
                step=r[6],
                step_started_at=_aware(r[7]),
                compensation_started_at=_aware(r[8]),
            )
            for r in rows
        ]
