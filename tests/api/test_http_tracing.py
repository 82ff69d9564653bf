"""The server span per HTTP request: recorded when sampled, context passed on when not."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from swift_trainer.core.telemetry import setup_tracing

from .conftest import Stack

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    setup_tracing("test", processor=SimpleSpanProcessor(spans))
    yield spans
    spans.shutdown()


def _named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


async def test_a_sampled_create_is_one_trace_from_the_request_to_the_command(
    memory_stack: Stack, exporter: InMemorySpanExporter
) -> None:
    response = await memory_stack.client.post(
        memory_stack.url("/jobs"),
        json={"job_id": "traced", "data_path": "d", "model_path": "m"},
        headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
    )
    assert response.status_code == 201, response.text
    (server,) = _named(exporter, "POST /api/v1/training/jobs")
    assert server.kind is SpanKind.SERVER
    assert server.context is not None and server.parent is not None
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert f"{server.parent.span_id:016x}" == PARENT_ID
    assert server.attributes is not None
    assert server.attributes["http.status_code"] == 201
    assert server.attributes["http.method"] == "POST"
    (sent,) = _named(exporter, "send SubmitJob")
    assert sent.parent is not None and sent.parent.span_id == server.context.span_id


async def test_an_unsampled_request_records_nothing_but_passes_its_trace_on(
    memory_stack: Stack, exporter: InMemorySpanExporter
) -> None:
    response = await memory_stack.client.post(
        memory_stack.url("/jobs"),
        json={"job_id": "untraced", "data_path": "d", "model_path": "m"},
        headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"},
    )
    assert response.status_code == 201, response.text
    assert exporter.get_finished_spans() == ()
    (stored, *_) = [e for e in await memory_stack.store.read_all() if "untraced" in e.stream_id]
    assert stored.metadata.trace["traceparent"].split("-")[1] == TRACE_ID


async def test_probes_and_metrics_are_not_traced(
    memory_stack: Stack, exporter: InMemorySpanExporter
) -> None:
    for path in (memory_stack.url("/health"), "/metrics"):
        assert (await memory_stack.client.get(path)).status_code == 200
    await memory_stack.client.get(memory_stack.url("/jobs"))
    names = {span.name for span in exporter.get_finished_spans()}
    assert names == {"GET /api/v1/training/jobs"}
