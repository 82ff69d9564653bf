"""The sampler of a process that exports nothing: ids and propagation without recording."""

from __future__ import annotations

import pytest
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from swift_trainer.core.telemetry import RecordWhenExported, records_under


def _remote_parent(*, sampled: bool) -> Context:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    parent = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=flags)
    return trace.set_span_in_context(NonRecordingSpan(parent))


def test_a_trace_started_without_an_exporter_is_not_recorded_but_has_ids_that_travel() -> None:
    tracer = TracerProvider(sampler=RecordWhenExported(exporting=False)).get_tracer("t")
    with tracer.start_as_current_span("root") as span:
        assert not span.is_recording()
        context = span.get_span_context()
        assert context.is_valid
        carrier: dict[str, str] = {}
        inject(carrier)
    _, trace_id, span_id, flags = carrier["traceparent"].split("-")
    assert (trace_id, span_id) == (f"{context.trace_id:032x}", f"{context.span_id:016x}")
    assert int(flags, 16) & TraceFlags.SAMPLED == 0


def test_a_sampled_trace_from_upstream_is_recorded_even_without_an_exporter() -> None:
    sampler = RecordWhenExported(exporting=False)
    result = sampler.should_sample(_remote_parent(sampled=True), 0x1234, "child")
    assert result.decision is Decision.RECORD_AND_SAMPLE
    result = sampler.should_sample(_remote_parent(sampled=False), 0x1234, "child")
    assert result.decision is Decision.DROP


def test_once_spans_are_exported_new_traces_are_recorded_by_the_same_sampler() -> None:
    sampler = RecordWhenExported(exporting=False)
    tracer = TracerProvider(sampler=sampler).get_tracer("t")
    with tracer.start_as_current_span("before") as before:
        assert not before.is_recording()
    sampler.exporting = True  # what setup_tracing does when a processor is added
    with tracer.start_as_current_span("after") as after:
        assert after.is_recording()


@pytest.mark.parametrize("exporting", [False, True])
@pytest.mark.parametrize(
    "carrier",
    [
        {},
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"},
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03"},
        {"traceparent": "garbage"},
    ],
)
def test_records_under_agrees_with_the_sampler_or_says_yes(
    carrier: dict[str, str], exporting: bool
) -> None:
    sampler = RecordWhenExported(exporting=exporting)
    parent = propagate.extract(carrier)
    span_context = trace.get_current_span(parent).get_span_context()
    trace_id = span_context.trace_id if span_context.is_valid else 1
    decision = sampler.should_sample(parent, trace_id, "publish").decision
    recorded = decision is not Decision.DROP
    answer = records_under(carrier, sampler)
    assert answer or not recorded, "never skips a span that would be recorded"
    if not exporting:
        assert answer == recorded, "exact while nothing is exported"
