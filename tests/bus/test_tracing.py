from __future__ import annotations

from nats.aio.client import Client
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from swift_trainer.bus.command_client import CommandClient
from swift_trainer.bus.command_handler import CommandHandler
from swift_trainer.bus.relay import OutboxRelay, RelayNudge
from swift_trainer.core import commands as c
from swift_trainer.core.spec import JobSpec
from swift_trainer.core.sqlstore import SqlEventStore
from swift_trainer.core.telemetry import setup_tracing


async def test_one_trace_spans_request_handling_append_and_published_events(
    nc: Client,
    store: SqlEventStore,
) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("test", processor=SimpleSpanProcessor(exporter))
    relay = OutboxRelay(store, nc)
    handler = CommandHandler(store, after_append=[RelayNudge(nc)])
    await handler.start(nc)
    await relay.reconcile()
    try:
        with trace.get_tracer("test").start_as_current_span("api request") as root:
            trace_id = root.get_span_context().trace_id
            spec = JobSpec(data_path="d", model_path="m", output_dir="o/t")
            reply = await CommandClient(nc, timeout=5).send(c.SubmitJob(job_id="t", spec=spec))
        assert reply.ok
        await relay.publish_pending()
    finally:
        await handler.stop()

    spans = {span.name: span for span in exporter.get_finished_spans()}
    for name in (
        "send SubmitJob",
        "handle SubmitJob",
        "event store append",
        "publish JobSubmitted",
        "publish JobQueued",
    ):
        assert name in spans, sorted(spans)
        context = spans[name].context
        assert context is not None
        assert context.trace_id == trace_id, f"{name} left the trace"
    stored = await store.read_all()
    assert stored[0].metadata.trace["traceparent"].split("-")[1] == f"{trace_id:032x}"
