"""Remembered sagas: the last state a store wrote of each saga, to decide on without loading it.

A store remembers a saga as its committed transition stored it, decides the saga's next event on
that, and writes with the usual version check: the check proves nobody changed the saga since, and
if somebody did the store loads it and decides again (see SqlSagaStore.transition). Finished sagas
and sagas with large inputs or results are not remembered; the memory is bounded in sagas and in
bytes. With CHECK_REMEMBERED_ENV set (the test suite sets it), every remembered state decided on
is compared with the stored one and each difference written to a file in that folder.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import fields, replace

from sagaflow.core.machine import SagaRecord, Transition

# Sagas a store keeps in memory, and the JSON bytes of their inputs and results it may hold: a
# saga past REMEMBERED_SAGA_BYTES is always loaded.
REMEMBERED_SAGAS = 2_000
REMEMBERED_BYTES = 32 * 1024 * 1024
REMEMBERED_SAGA_BYTES = 64 * 1024
RECORD_OVERHEAD_BYTES = 3 * 1024  # a saga of 5 steps, without its JSON
# Set to a folder, stores check every remembered state they decide on against the stored one
# and write a file there for each difference.
CHECK_REMEMBERED_ENV = "SAGAFLOW_CHECK_REMEMBERED"


class RememberedSagas:
    """Sagas by id, as last written by one store; safe to use from several threads."""

    def __init__(self, limit: int = REMEMBERED_SAGAS) -> None:
        self.limit = limit
        # saga id -> (its state as stored, the bytes it counts for)
        self._sagas: dict[str, tuple[SagaRecord, int]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def take(self, saga_id: str) -> SagaRecord | None:
        """The remembered saga, forgotten: of two threads deciding on one saga, one loads it."""
        with self._lock:
            return self._pop(saga_id)

    def _pop(self, saga_id: str) -> SagaRecord | None:
        entry = self._sagas.pop(saga_id, None)
        if entry is None:
            return None
        self._bytes -= entry[1]
        return entry[0]

    def keep_written(self, before: SagaRecord | None, outcome: Transition) -> None:
        """Remember the saga as the committed transition stored it: what loading it would give."""
        after = outcome.saga
        if before is None or after.updated_at is None:
            return
        self.keep(
            replace(
                after,
                # A transition never rewrites these columns, and the store sets the version.
                saga_type=before.saga_type,
                data=before.data,
                created_at=before.created_at,
                version=before.version + 1,
            )
        )

    def keep(self, saga: SagaRecord) -> None:
        """Remember `saga` as it is stored (loaded under its row lock, or as written)."""
        if saga.state.is_terminal or self.limit <= 0:
            return
        try:
            size = RECORD_OVERHEAD_BYTES + len(
                json.dumps([saga.data, [s.result for s in saga.steps]], default=str)
            )
        except (TypeError, ValueError):
            return
        if size > REMEMBERED_SAGA_BYTES:
            return
        with self._lock:
            self._pop(saga.saga_id)
            self._sagas[saga.saga_id] = (saga, size)
            self._bytes += size
            while len(self._sagas) > self.limit or self._bytes > REMEMBERED_BYTES:
                self._pop(next(iter(self._sagas)))

    def forget(self) -> None:
        with self._lock:
            self._sagas.clear()
            self._bytes = 0


def check_folder() -> str | None:
    """Where differences between remembered and stored sagas are reported, if they are checked."""
    return os.environ.get(CHECK_REMEMBERED_ENV) or None


def report_difference(folder: str, known: SagaRecord, stored: SagaRecord | None) -> None:
    """Write down how `known` (remembered) differs from `stored`, if it is not what is stored
    at the same version."""
    if stored is None or stored.version != known.version or stored == known:
        return  # gone or moved: the version check refuses the write either way
    differences = {
        f.name: [repr(getattr(known, f.name)), repr(getattr(stored, f.name))]
        for f in fields(SagaRecord)
        if getattr(known, f.name) != getattr(stored, f.name)
    }
    path = os.path.join(folder, f"{known.saga_id}-v{known.version}-{os.getpid()}.json")
    with open(path, "w") as out:
        json.dump({"saga_id": known.saga_id, "remembered_vs_stored": differences}, out)
