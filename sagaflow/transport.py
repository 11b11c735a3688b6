"""kombu's filesystem transport, made safe for several processes sharing one folder.

The stock transport writes a message file in place and readers move it to the temp folder, so a
reader can take a file the writer has not finished (the worker then dies on a JSON error), and
two readers can both copy a file when the temp folder is on another filesystem. Here writers
publish by atomic rename and readers claim a file by atomic rename inside the same folder, then
read it under the writer's lock. `filesystem://` URLs use this class in every sagaflow process.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from queue import Empty
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, filesystem

PARTIAL_READ_DEADLINE = 5.0


class Channel(filesystem.Channel):
    def _put(self, queue: Any, message: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        folder = self.data_folder_out
        partial = os.path.join(folder, f".writing-{name}")
        with open(partial, "wb") as f:
            f.write(json.dumps(message).encode())
        os.rename(partial, os.path.join(folder, name))

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        suffix = f"{queue}.msg"
        folder = self.data_folder_in
        for filename in sorted(os.listdir(folder)):
            if filename.startswith(".") or filename.partition(".")[2] != suffix:
                continue
            claimed = os.path.join(folder, f".claimed-{os.getpid()}-{filename}")
            try:
                os.rename(os.path.join(folder, filename), claimed)
            except OSError:
                continue  # another consumer claimed it first
            return _read_complete(claimed)
        raise Empty()


def _read_complete(path: str) -> Any:
    """Read a claimed message, waiting out a writer that still holds it (non-atomic writers)."""
    deadline = time.monotonic() + PARTIAL_READ_DEADLINE
    while True:
        with open(path, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # the lock kombu's writers hold
            try:
                payload = f.read()
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        try:
            message = json.loads(payload)
        except ValueError:
            if time.monotonic() < deadline:
                time.sleep(0.002)
                continue
            os.rename(path, path.replace(".claimed-", ".corrupt-", 1))
            raise Empty() from None
        os.remove(path)
        return message


class Transport(filesystem.Transport):
    Channel = Channel


def register() -> None:
    TRANSPORT_ALIASES["filesystem"] = "sagaflow.transport:Transport"
