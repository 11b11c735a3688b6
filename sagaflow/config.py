"""sagaflow's settings: read once from SAGAFLOW_* environment variables, passed explicitly.

With nothing set, everything is embedded under `.sagaflow/` in the working directory: a SQLite
store and kombu's filesystem broker, so no server is needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sagaflow.errors import ConfigurationError
from sagaflow.logs import LOG_FORMATS

DEFAULT_HOME = ".sagaflow"
DEFAULT_QUEUE = "sagaflow"
DEFAULT_EVENTS_EXCHANGE = "sagaflow.events"
# A message larger than this is quarantined before it is decoded.
DEFAULT_MAX_MESSAGE_BYTES = 4_000_000


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _flag(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigurationError(f"{name} must be 1 or 0 (true or false), not {value!r}")


@dataclass(frozen=True)
class Settings:
    """Everything a sagaflow process needs to know about its surroundings."""

    home: Path = Path(DEFAULT_HOME)
    broker_url: str = ""
    database_url: str = ""
    result_backend: str | None = None
    queue: str = DEFAULT_QUEUE
    events_exchange: str = DEFAULT_EVENTS_EXCHANGE
    definitions: tuple[str, ...] = field(default_factory=tuple)
    max_input_bytes: int = 1_000_000
    # A message on a sagaflow worker's queue over this size is quarantined before it is decoded.
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # A running saga that has not moved for this long is re-driven by the recovery sweep.
    stall_timeout: float = 300.0
    recover_interval: float = 15.0  # how late a step timeout can be noticed
    # A worker whose beacon is silent this long is gone and its steps are sent again (None:
    # 10 seconds, or off on RabbitMQ, which gives a dead consumer's messages back itself).
    worker_lost_after: float | None = None
    # Task events for the orchestrator's own tasks (start, step outcomes): off, because the
    # saga history records every transition and each task's three events cost the orchestrator
    # a tenth of its throughput. Step tasks on service workers send theirs either way.
    orchestrator_task_events: bool = False
    # Where a producer keeps starts the store did not answer for (sagaflow.client.outbox).
    outbox_path: str = ""
    # How sagaflow's workers write their log: "text" (Celery's) or "json" (sagaflow.logs).
    log_format: str = "text"

    def __post_init__(self) -> None:
        home = Path(self.home)
        object.__setattr__(self, "home", home)
        if not self.outbox_path:
            object.__setattr__(self, "outbox_path", str(home / "start-outbox.db"))
        if not self.broker_url:
            object.__setattr__(self, "broker_url", "filesystem://")
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{home / 'sagaflow.db'}")
        if not self.queue:
            raise ConfigurationError("the orchestrator queue name must not be empty")
        if self.log_format not in LOG_FORMATS:
            raise ConfigurationError(
                f"SAGAFLOW_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, "
                f"not {self.log_format!r}"
            )
        if self.max_message_bytes < self.max_input_bytes + 64 * 1024:
            raise ConfigurationError(
                f"SAGAFLOW_MAX_MESSAGE_BYTES ({self.max_message_bytes}) must leave room for a "
                f"start carrying the largest input: at least SAGAFLOW_MAX_INPUT_BYTES + 65536 "
                f"({self.max_input_bytes + 64 * 1024})"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "home": Path(env.get("SAGAFLOW_HOME", DEFAULT_HOME)),
            "broker_url": env.get("SAGAFLOW_BROKER_URL", ""),
            "database_url": env.get("SAGAFLOW_DATABASE_URL", ""),
            "result_backend": env.get("SAGAFLOW_RESULT_BACKEND") or None,
            "queue": env.get("SAGAFLOW_QUEUE", DEFAULT_QUEUE),
            "events_exchange": env.get("SAGAFLOW_EVENTS_EXCHANGE", DEFAULT_EVENTS_EXCHANGE),
            "definitions": _split(env.get("SAGAFLOW_DEFINITIONS", "")),
            "outbox_path": env.get("SAGAFLOW_OUTBOX_PATH", ""),
            "log_format": env.get("SAGAFLOW_LOG_FORMAT", "text").strip().lower(),
        }
        for name, key, kind in (
            ("SAGAFLOW_MAX_INPUT_BYTES", "max_input_bytes", int),
            ("SAGAFLOW_MAX_MESSAGE_BYTES", "max_message_bytes", int),
            ("SAGAFLOW_STALL_TIMEOUT", "stall_timeout", float),
            ("SAGAFLOW_RECOVER_INTERVAL", "recover_interval", float),
            ("SAGAFLOW_WORKER_LOST_AFTER", "worker_lost_after", float),
        ):
            if name in env:
                try:
                    values[key] = kind(env[name])
                except ValueError:
                    kind_name = "an integer" if kind is int else "a number"
                    raise ConfigurationError(f"{name} must be {kind_name}") from None
        if "SAGAFLOW_ORCHESTRATOR_TASK_EVENTS" in env:
            values["orchestrator_task_events"] = _flag(
                "SAGAFLOW_ORCHESTRATOR_TASK_EVENTS", env["SAGAFLOW_ORCHESTRATOR_TASK_EVENTS"]
            )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def worker_lost_seconds(self) -> float:
        """Seconds of beacon silence after which a worker is gone; 0 when not watched."""
        if self.worker_lost_after is not None:
            return max(0.0, self.worker_lost_after)
        return 0.0 if self.broker_url.startswith(("amqp", "pyamqp")) else 10.0

    @property
    def is_filesystem_broker(self) -> bool:
        return self.broker_url.startswith("filesystem:")

    @property
    def broker_folder(self) -> Path:
        return self.home / "broker"

    def to_env(self) -> dict[str, str]:
        """The environment that makes a child process see these same settings."""
        env = {
            "SAGAFLOW_HOME": str(self.home),
            "SAGAFLOW_BROKER_URL": self.broker_url,
            "SAGAFLOW_DATABASE_URL": self.database_url,
            "SAGAFLOW_QUEUE": self.queue,
            "SAGAFLOW_EVENTS_EXCHANGE": self.events_exchange,
            "SAGAFLOW_DEFINITIONS": ",".join(self.definitions),
            "SAGAFLOW_MAX_INPUT_BYTES": str(self.max_input_bytes),
            "SAGAFLOW_MAX_MESSAGE_BYTES": str(self.max_message_bytes),
            "SAGAFLOW_STALL_TIMEOUT": str(self.stall_timeout),
            "SAGAFLOW_RECOVER_INTERVAL": str(self.recover_interval),
            "SAGAFLOW_ORCHESTRATOR_TASK_EVENTS": "1" if self.orchestrator_task_events else "0",
            "SAGAFLOW_OUTBOX_PATH": self.outbox_path,
            "SAGAFLOW_LOG_FORMAT": self.log_format,
        }
        if self.result_backend:
            env["SAGAFLOW_RESULT_BACKEND"] = self.result_backend
        if self.worker_lost_after is not None:
            env["SAGAFLOW_WORKER_LOST_AFTER"] = str(self.worker_lost_after)
        return env


def celery_settings(settings: Settings) -> dict[str, Any]:
    """Celery configuration for every sagaflow process (orchestrator, services, producers)."""
    conf: dict[str, Any] = {
        "broker_url": settings.broker_url,
        # JSON only: a pickle payload on a shared broker is remote code execution.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "result_accept_content": ["json"],
        # A task is acknowledged after it ran, and a killed worker's task goes back to the queue.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message at a time per process: prefetched messages wait behind a slow task.
        "worker_prefetch_multiplier": 1,
        # Task events on, so Flower sees every step task (the orchestrator's own tasks follow
        # Settings.orchestrator_task_events). "Sent" events (queued tasks in Flower) cost one
        # more message per dispatch: off here, turn them on in celeryconfig if wanted.
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "task_track_started": True,
        "task_default_queue": settings.queue,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "enable_utc": True,
        "timezone": "UTC",
        "result_backend": settings.result_backend,
        "task_ignore_result": settings.result_backend is None,
    }
    if settings.is_filesystem_broker:
        folder = str(settings.broker_folder)
        conf["broker_transport_options"] = {
            "data_folder_in": folder,
            "data_folder_out": folder,
            "control_folder": str(settings.home / "broker-control"),
            "polling_interval": 0.01,
        }
    elif settings.broker_url.startswith(("redis://", "rediss://")):
        conf["broker_transport_options"] = {
            # Above the longest step: an unacked message older than this is redelivered.
            "visibility_timeout": 3600,
        }
    return conf


def ensure_home(settings: Settings) -> None:
    """Create the folders an embedded setup needs (SQLite file's folder, broker folders)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    if settings.is_filesystem_broker:
        settings.broker_folder.mkdir(parents=True, exist_ok=True)
        (settings.home / "broker-control").mkdir(parents=True, exist_ok=True)
