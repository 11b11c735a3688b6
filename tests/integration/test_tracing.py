"""Traces that name the saga: with OpenTelemetry's Celery instrumentation in real orchestrator
and service worker processes, every task a saga runs is a span of the producer's trace, and
those of its steps carry saga.id, saga.type, saga.step, saga.phase and saga.attempt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sagaflow import SagaState
from sagaflow.client.saga_client import SagaClient
from sagaflow.config import Settings, ensure_home
from sagaflow.devstack.processes import WorkerGroup, WorkerSpec
from tests.conftest import ROOT, service_env
from tests.spans import span_json


def test_a_sagas_tasks_are_one_trace_and_its_step_spans_name_the_saga(tmp_path: Path) -> None:
    home = tmp_path / "home"
    spans_file = tmp_path / "spans.jsonl"
    settings = Settings(home=home, definitions=("tests.sagas",))
    ensure_home(settings)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = CeleryInstrumentor()
    instrumentor.instrument(tracer_provider=provider)  # the producer: its start is traced
    client = SagaClient(settings)
    client.store.upgrade()
    env = {
        **service_env(settings, f"sqlite:///{tmp_path / 'effects.db'}"),
        "TEST_SPANS_FILE": str(spans_file),
    }
    traced = ("-I", "tests.traced")
    try:
        with WorkerGroup(env, home / "logs", cwd=ROOT) as group:
            group.start(
                WorkerSpec("orchestrator", "sagaflow.worker", ["sagaflow"], extra_args=traced)
            )
            group.start(WorkerSpec("svc", "tests.services", ["svc_a", "svc_b"], extra_args=traced))
            group.wait_ready(client.app)
            saga_id = client.start("trip", {"fail_at": ["a3"]})
            assert client.wait(saga_id, timeout=60).state is SagaState.FAILED
            group.stop()  # a worker's spans are all written once it has stopped
    finally:
        instrumentor.uninstrument()
        client.close()
    (start,) = [span_json(s) for s in exporter.get_finished_spans() if "sagaflow.start" in s.name]
    spans: list[dict[str, Any]] = [json.loads(line) for line in spans_file.read_text().splitlines()]
    in_trace = [s for s in spans if s["trace_id"] == start["trace_id"]]
    runs = [s for s in in_trace if s["name"].startswith("run/")]
    steps = [
        s for s in runs if s["attributes"].get("saga.id") == saga_id and s["name"] == "run/svc.act"
    ]
    named = {(s["attributes"]["saga.step"], s["attributes"]["saga.phase"]) for s in steps}
    assert {("a1", "action"), ("b2", "action"), ("a3", "action")} <= named, steps
    undos = [s for s in runs if s["name"] == "run/svc.undo"]
    assert {s["attributes"]["saga.step"] for s in undos} == {"a1", "b2"}, undos
    assert all(s["attributes"]["saga.phase"] == "compensation" for s in undos), undos
    for span in steps + undos:
        assert span["attributes"]["saga.type"] == "trip" and span["attributes"]["saga.attempt"] == 1
    # the orchestrator's tasks for the saga are in the producer's trace too, and name it
    outcomes = [
        s for s in runs if s["name"] in ("run/sagaflow.step_succeeded", "run/sagaflow.step_failed")
    ]
    assert outcomes and all(s["attributes"].get("saga.id") == saga_id for s in outcomes), outcomes
    assert any(s["name"] == "run/sagaflow.start" for s in in_trace), in_trace
