"""Building Celery apps with sagaflow's settings (the only place an app is configured)."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import ssl
import threading
import types
from collections.abc import Mapping
from typing import Any

from celery import Celery, signals
from celery._state import get_current_task

from sagaflow import logs
from sagaflow.config import Settings, celery_settings, ensure_home
from sagaflow.errors import ConfigurationError
from sagaflow.messaging import tracing, transport

logger = logging.getLogger(__name__)

CONFIG_MODULE_ENV = "SAGAFLOW_CELERY_CONFIG"
# Connections always come from Settings (SAGAFLOW_* variables or explicit arguments), so a
# process given explicit settings never has them replaced by a config module's copy.
CONNECTION_KEYS = ("broker_url", "result_backend", "task_ignore_result")


def _user_overrides() -> dict[str, Any]:
    """Settings from the Celery config module (`celeryconfig` by convention), if there is one."""
    name = os.environ.get(CONFIG_MODULE_ENV, "celeryconfig")
    if not name:
        return {}
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name and CONFIG_MODULE_ENV not in os.environ:
            return {}  # no celeryconfig next to the app: sagaflow's defaults apply
        raise ConfigurationError(f"cannot import Celery config module {name!r}: {exc}") from exc
    return {
        key: value
        for key, value in vars(module).items()
        if not key.startswith("_")
        and key.islower()
        and not isinstance(value, types.ModuleType)
        and not callable(value)
    }


def create_app(main: str, settings: Settings | None = None, task_cls: Any = None) -> Celery:
    settings = settings or Settings.from_env()
    ensure_home(settings)
    conf = celery_settings(settings)
    overrides = _user_overrides()
    for key in CONNECTION_KEYS:
        overrides.pop(key, None)
    # A config module may add transport options (confirm_publish, ...); those sagaflow sets
    # (where the filesystem broker lives, Redis' visibility timeout) stay sagaflow's.
    extra_options = overrides.pop("broker_transport_options", None)
    if isinstance(extra_options, dict):
        conf["broker_transport_options"] = {
            **extra_options,
            **conf.get("broker_transport_options", {}),
        }
    elif extra_options is not None:
        raise ConfigurationError(
            f"broker_transport_options must be a dict, not {type(extra_options).__name__}"
        )
    conf.update(overrides)
    _choose_transport(conf, settings.broker_url)
    _require_json_only(conf)
    app = Celery(main, set_as_current=False, **({"task_cls": task_cls} if task_cls else {}))
    app.conf.update(conf)
    log_saga_fields(settings.log_format)
    return app


def log_saga_fields(log_format: str = "text") -> None:
    """The saga's fields on every record logged while a task runs for a saga (sagaflow.logs),
    Celery's own lines about the task included, and the JSON format if asked for. Connected
    once per process, whatever the apps."""
    if log_format in _logging_hooked:
        return
    _logging_hooked.add(log_format)

    def hook(logger: Any = None, **_: Any) -> None:
        if isinstance(logger, logging.Logger):
            logs.install(logger.handlers, log_format, current_task=get_current_task)

    signals.after_setup_logger.connect(hook, weak=False)
    signals.after_setup_task_logger.connect(hook, weak=False)
    if len(_logging_hooked) > 1:
        return  # the task's fields are set once, whatever the formats
    # Celery logs a task's success or failure between these two signals.
    signals.task_prerun.connect(_enter_task, weak=False)
    signals.task_postrun.connect(_leave_task, weak=False)


_logging_hooked: set[str] = set()
# (task id, thread) -> what ends its saga's fields: the same task can run twice at once (a
# redelivery), each in its own thread of a threads pool.
_task_fields: dict[tuple[str, int], Any] = {}


def _enter_task(task_id: Any = None, task: Any = None, **signal: Any) -> None:
    request = getattr(task, "request", None)
    fields = logs.fields_of_task(request, signal.get("args"), signal.get("kwargs"))
    if not fields or not isinstance(task_id, str):
        return
    attempt = _attempt(request, signal)
    _task_fields[(task_id, threading.get_ident())] = (logs.enter(fields), fields, attempt)
    tracing.tag_task_span(task, task_id, fields, attempt)


def _attempt(request: Any, signal: Mapping[str, Any]) -> Any:
    """The attempt an orchestrator task's outcome reports, or a step's callback will."""
    try:
        kwargs = signal.get("kwargs")
        if isinstance(kwargs, Mapping) and "attempt" in kwargs:
            return kwargs["attempt"]
        for callback in getattr(request, "callbacks", None) or ():
            reported = callback.get("kwargs") if isinstance(callback, Mapping) else None
            if isinstance(reported, Mapping) and "attempt" in reported:
                return reported["attempt"]
    except Exception:  # whatever a message holds, a task's log fields never fail it
        pass
    return None


def _leave_task(task_id: Any = None, task: Any = None, **_: Any) -> None:
    if not isinstance(task_id, str):
        return
    entered = _task_fields.pop((task_id, threading.get_ident()), None)
    if entered is None:
        return
    token, fields, attempt = entered
    try:
        tracing.tag_task_span(task, task_id, fields, attempt)
    finally:
        # ValueError: set in another context (a pool that moved the task): let it be.
        with contextlib.suppress(ValueError):
            logs.leave(token)


def _choose_transport(conf: dict[str, Any], broker_url: str) -> None:
    """sagaflow's transport for this app alone (kombu's aliases stay as they are), unless the
    config module names one."""
    chosen = transport.transport_for(broker_url)
    if chosen is None or conf.get("broker_transport"):
        return
    conf["broker_transport"] = chosen
    if transport.broker_scheme(broker_url) == "rediss" and not conf.get("broker_use_ssl"):
        # What kombu does for a rediss:// URL when it picks the transport by the URL's scheme
        # (and warns about): TLS without certificate checks. broker_use_ssl sets them.
        logger.warning(
            "rediss:// broker without broker_use_ssl: TLS without certificate verification; "
            "set broker_use_ssl in your Celery config module to verify the server"
        )
        conf["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_NONE}


def _require_json_only(conf: dict[str, Any]) -> None:
    """Refuse any setting that would let pickle (or another non-JSON format) in."""
    from kombu.serialization import prepare_accept_content

    for key in ("accept_content", "result_accept_content"):
        value = conf.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            value = [value]
        accepted: set[str] = prepare_accept_content(list(value))  # type: ignore[no-untyped-call]
        if accepted - {"application/json"}:
            raise ConfigurationError(
                f"sagaflow accepts JSON only: {key} = {list(value)!r} lets in "
                f"{sorted(accepted - {'application/json'})}"
            )
    for key in ("task_serializer", "result_serializer", "event_serializer"):
        if conf.get(key) not in (None, "json"):
            raise ConfigurationError(f"sagaflow accepts JSON only: {key} = {conf[key]!r}")
