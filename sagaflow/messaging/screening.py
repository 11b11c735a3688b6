"""The screen in front of every sagaflow worker's task consumer.

Celery hands each message to `Request`, which raises on some shapes (a JSON body that is not the
`[args, kwargs, embed]` triple, headers without an id) in the worker's main process: the worker
exits, the message goes back on the queue, and every restart dies on it again. Installed as a
consumer bootstep, the screen looks at each message first. One that cannot be a task of this
worker (over the size limit, checked before the body is decoded; undecodable; the wrong shape;
an unknown task) is sent to the orchestrator as a quarantine record, acknowledged, logged once,
and the worker carries on. Whatever Celery still raises on a message is caught the same way.

Knows no store: the record travels as a JSON message (sagaflow.core.quarantine) to the orchestrator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Mapping
from datetime import datetime, timezone
from typing import Any

from celery import Celery, bootsteps
from celery.utils.time import maybe_iso8601
from celery.worker.consumer.tasks import Tasks
from kombu.serialization import prepare_accept_content

from sagaflow.config import DEFAULT_MAX_MESSAGE_BYTES
from sagaflow.core.messages import brief, plain_saga_id
from sagaflow.core.quarantine import (
    OVERSIZE_KEPT_BYTES,
    QUARANTINE_TASK,
    QuarantinedMessage,
    QuarantineReason,
    clean_headers,
    record_id_for,
)

logger = logging.getLogger("sagaflow.quarantine")

# Headers Celery's Request reads when it takes a message, and the types it can read them as.
_OPTIONAL_TEXT_HEADERS = ("root_id", "parent_id", "group", "shadow", "eta", "expires")
_OPTIONAL_REPR_HEADERS = ("argsrepr", "kwargsrepr", "origin", "lang")
_EMBED_SIGNATURE_LISTS = ("callbacks", "errbacks", "chain")

# Called for a step message whose task this worker does not know: reports the step as failed
# to its saga and returns a note for the record (or None if the message was no saga step).
UnknownTaskReporter = Callable[[Any, Any, str, str, str | None], str | None]


class MessageScreen:
    """Decides whether a message can be a task of one Celery app, and quarantines it if not."""

    def __init__(
        self,
        app: Celery,
        orchestrator_queue: str,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        report_unknown: UnknownTaskReporter | None = None,
    ) -> None:
        self.app = app
        self.orchestrator_queue = orchestrator_queue
        self.max_message_bytes = max_message_bytes
        self.report_unknown = report_unknown
        self._accepted: set[str] | None = None

    # -- deciding ------------------------------------------------------------------------------

    def problem(
        self, message: Any, known_tasks: Container[str]
    ) -> tuple[QuarantineReason, str, Any] | None:
        """Why `message` cannot be a task here (reason, detail, the decoded body if any)."""
        headers = message.headers
        if not isinstance(headers, Mapping):
            return QuarantineReason.NOT_A_TASK, "no task headers (not a Celery task message)", None
        name = headers.get("task")
        limit = self.max_message_bytes * (2 if name == QUARANTINE_TASK else 1)
        size = len(message.body or b"")
        if size > limit:
            return (
                QuarantineReason.OVERSIZE,
                f"{size} bytes, over the limit of {limit} (SAGAFLOW_MAX_MESSAGE_BYTES)",
                None,
            )
        shape = _header_problem(headers)
        if shape is not None:
            return QuarantineReason.NOT_A_TASK, shape, None
        if self._accepted is None:  # read once the worker runs: the app's final settings
            self._accepted = prepare_accept_content(self.app.conf.accept_content or ["json"])  # type: ignore[no-untyped-call]
        if message.content_type not in self._accepted:
            return (
                QuarantineReason.UNDECODABLE,
                f"content type {message.content_type!r} is not accepted here",
                None,
            )
        try:
            body = message.decode()
        except RecursionError:
            return QuarantineReason.UNDECODABLE, "body nested too deeply to decode", None
        except Exception as exc:
            return QuarantineReason.UNDECODABLE, f"body cannot be decoded: {exc!r:.300}", None
        shape = _body_problem(body)
        if shape is not None:
            return QuarantineReason.NOT_A_TASK, shape, body
        if name not in known_tasks:
            return QuarantineReason.UNKNOWN_TASK, f"no task named {name!r} on this worker", body
        return None

    # -- quarantining --------------------------------------------------------------------------

    def quarantine(
        self,
        message: Any,
        reason: QuarantineReason,
        detail: str,
        hostname: str | None,
        body: Any = None,
    ) -> None:
        """Send the message to the quarantine, then acknowledge it. If the send fails the
        message is left unacknowledged: the broker gives it back, and it is screened again."""
        headers = message.headers if isinstance(message.headers, Mapping) else {}
        delivery = getattr(message, "delivery_info", None) or {}
        queue = delivery.get("routing_key") or delivery.get("queue")
        name = headers.get("task") if isinstance(headers.get("task"), str) else None
        task_id = headers.get("id") if isinstance(headers.get("id"), str) else None
        note = None
        if reason is QuarantineReason.UNKNOWN_TASK and self.report_unknown is not None:
            note = self.report_unknown(message, body, name or "", task_id or "", queue)
        raw: bytes = message.body or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        truncated = reason is QuarantineReason.OVERSIZE
        record = QuarantinedMessage(
            id=record_id_for(queue, message.headers, raw),
            reason=reason,
            detail=detail,
            queue=queue,
            task=name,
            task_id=task_id,
            saga_id=_saga_id_in(body),
            hostname=hostname,
            received_at=datetime.now(timezone.utc),
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            headers=clean_headers(message.headers),
            properties=clean_headers(getattr(message, "properties", None) or {}),
            body=raw[:OVERSIZE_KEPT_BYTES] if truncated else raw,
            body_size=len(raw),
            truncated=truncated,
            note=note,
        )
        send_quarantine_record(self.app, self.orchestrator_queue, record)
        message.ack()
        logger.warning(
            "quarantined message %s (task %r) from queue %r: %s: %s; "
            "see `sagaflow quarantine show %s`",
            task_id or "?",
            name,
            queue,
            reason.value,
            detail,
            record.id,
        )

    def guard(self, handler: Callable[[Any], Any], consumer: Any) -> Callable[[Any], Any]:
        """`handler` (Celery's on_task_received) behind the screen."""

        def on_task_received(message: Any) -> Any:
            try:
                found = self.problem(message, consumer.strategies)
            except Exception as exc:  # the screen itself must not be a way to stop a worker
                found = QuarantineReason.NOT_A_TASK, f"cannot be screened: {exc!r:.300}", None
            if found is not None:
                return self._quarantine_safely(message, consumer, *found)
            try:
                return handler(message)
            except Exception as exc:
                logger.exception("Celery could not take message %r", _task_id(message))
                if not message.acknowledged:
                    self._quarantine_safely(
                        message,
                        consumer,
                        QuarantineReason.NOT_A_TASK,
                        f"Celery could not take it: {exc!r:.300}",
                        None,
                    )
                return None

        return on_task_received

    def _quarantine_safely(
        self, message: Any, consumer: Any, reason: QuarantineReason, detail: str, body: Any
    ) -> None:
        try:
            self.quarantine(message, reason, detail, consumer.hostname, body)
        except Exception:
            # The broker took the record's send badly: leave the message unacknowledged (it
            # comes back after a reconnect) rather than lose it or stop the worker.
            logger.exception(
                "could not quarantine message %r; it stays on the broker", _task_id(message)
            )


def send_quarantine_record(
    app: Celery, orchestrator_queue: str, record: QuarantinedMessage
) -> None:
    """Publish `record` to the orchestrator, JSON whatever the host app's serializer."""
    app.send_task(
        QUARANTINE_TASK,
        kwargs={"record": record.to_json()},
        queue=orchestrator_queue,
        serializer="json",
        retry=True,
        retry_policy={"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5},
        argsrepr="()",
        kwargsrepr=f"{{'record': {record.id!r}, 'reason': {record.reason.value!r}}}",
    )


def install_screen(app: Celery, screen: MessageScreen) -> None:
    """Put `screen` in front of the task consumer of every worker started from `app`."""
    if getattr(app, "sagaflow_screen", None) is not None:
        app.sagaflow_screen = screen  # the latest settings win; the bootstep reads them
        return
    app.sagaflow_screen = screen

    class ScreenMessages(bootsteps.StartStopStep):  # type: ignore[misc]
        """Wraps the consumer's task handler; again after every connection restart."""

        requires = (Tasks,)
        name = "sagaflow.screen"

        def start(self, consumer: Any) -> None:
            if getattr(consumer, "_sagaflow_screened", False):
                return
            original = consumer.create_task_handler

            def create_task_handler(*args: Any, **kwargs: Any) -> Any:
                return app.sagaflow_screen.guard(original(*args, **kwargs), consumer)

            consumer.create_task_handler = create_task_handler
            consumer._sagaflow_screened = True

    app.steps["consumer"].add(ScreenMessages)


def _header_problem(headers: Mapping[str, Any]) -> str | None:
    for key in ("task", "id"):
        value = headers.get(key)
        if not isinstance(value, str) or not value or len(value) > 255:
            return f"header {key!r} is {brief(value)}, not a task {key}"
    for key in _OPTIONAL_TEXT_HEADERS:
        value = headers.get(key)
        if value is not None and not (isinstance(value, str) and len(value) <= 255):
            return f"header {key!r} is {brief(value)}, not text"
    for key in _OPTIONAL_REPR_HEADERS:
        value = headers.get(key)
        if value is not None and not isinstance(value, str):
            return f"header {key!r} is {brief(value)}, not text"
    for key in ("eta", "expires"):
        value = headers.get(key)
        if value is not None:
            try:
                maybe_iso8601(value)
            except (ValueError, TypeError, AttributeError, OverflowError):
                return f"header {key!r} is {brief(value)}, not an ISO 8601 time"
    timelimit = headers.get("timelimit")
    if timelimit is not None and not (
        isinstance(timelimit, list | tuple)
        and len(timelimit) == 2
        and all(_is_number(limit) or limit is None for limit in timelimit)
    ):
        return f"header 'timelimit' is {brief(timelimit)}, not [soft, hard] seconds"
    retries = headers.get("retries")
    if retries is not None and not (_is_number(retries) and isinstance(retries, int)):
        return f"header 'retries' is {brief(retries)}, not a count"
    if headers.get("ignore_result") not in (None, True, False):
        return f"header 'ignore_result' is {brief(headers.get('ignore_result'))}"
    return None


def _body_problem(body: Any) -> str | None:
    if not isinstance(body, list | tuple) or len(body) != 3:
        return f"body is {brief(body)}, not Celery's [args, kwargs, embed]"
    args, kwargs, embed = body
    if not isinstance(args, list | tuple):
        return f"args are {brief(args)}, not a list"
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        return f"kwargs are {brief(kwargs)}, not an object"
    if not isinstance(embed, dict):
        return f"embed is {brief(embed)}, not an object"
    for key in _EMBED_SIGNATURE_LISTS:
        signatures = embed.get(key)
        if signatures is None:
            continue
        if not isinstance(signatures, list | tuple) or not all(
            isinstance(s, dict) and isinstance(s.get("task"), str) for s in signatures
        ):
            return f"embed {key!r} is {brief(signatures)}, not a list of task signatures"
    chord = embed.get("chord")
    if chord is not None and not isinstance(chord, dict):
        return f"embed 'chord' is {brief(chord)}, not a signature"
    return None


def _saga_id_in(body: Any) -> str | None:
    """The saga a (well enough shaped) message names, so the record can be found by saga."""
    if not isinstance(body, list | tuple) or len(body) != 3:
        return None
    args, kwargs, _ = body
    if isinstance(kwargs, dict) and plain_saga_id(kwargs.get("saga_id")):
        return str(kwargs["saga_id"])
    if isinstance(args, list | tuple) and args and isinstance(args[0], dict):
        return plain_saga_id(args[0].get("saga_id"))  # a step's context
    return None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _task_id(message: Any) -> object:
    headers = getattr(message, "headers", None)
    return headers.get("id") if isinstance(headers, Mapping) else None
