"""OpenTelemetry in a test's worker processes (`celery worker -I tests.traced`): the Celery
instrumentation, and every finished span written as a JSON line to TEST_SPANS_FILE."""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.spans import FileExporter

_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(FileExporter(os.environ["TEST_SPANS_FILE"])))
trace.set_tracer_provider(_provider)
CeleryInstrumentor().instrument()
