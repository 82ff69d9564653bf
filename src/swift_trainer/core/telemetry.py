"""OpenTelemetry setup, configured only by the standard ``OTEL_*`` variables.

A real SDK tracer provider is installed even when nothing is exported, so trace context is
still created and propagated through NATS headers (logs and events carry trace ids that an
operator can search for); exporting is off unless ``OTEL_TRACES_EXPORTER`` or an OTLP
endpoint is set.

A process that exports nothing does not record the traces it starts (``ParentBased`` on
``ALWAYS_OFF``): its spans still get ids and travel in headers, but skip the SDK's
attribute copies and span processors, which measured as a tenth of a create's CPU. A trace
that arrives sampled is still recorded. Give every process of a deployment the same
``OTEL_*`` settings: a process that starts a trace without exporting marks it unsampled
for the processes after it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

_log = logging.getLogger(__name__)
_configured = False


class RecordWhenExported(Sampler):
    """``ParentBased(ALWAYS_ON)`` once spans go somewhere, ``ParentBased(ALWAYS_OFF)`` until
    then. One object that switches, because tracers keep the sampler they were made with."""

    def __init__(self, *, exporting: bool) -> None:
        self.exporting = exporting
        self._on = ParentBased(ALWAYS_ON)
        self._off = ParentBased(ALWAYS_OFF)

    def should_sample(  # noqa: PLR0917 - the SDK's Sampler signature
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        chosen = self._on if self.exporting else self._off
        return chosen.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"RecordWhenExported(exporting={self.exporting})"


def records_under(carrier: Mapping[str, str], sampler: Sampler | None = None) -> bool:
    """Whether a span started under the trace context in ``carrier`` would be recorded.

    For a hot path whose span nobody else sees (its context goes nowhere): while this
    process exports nothing, a child of an unsampled or absent context is not recorded, so
    the span need not be started at all. Under any other sampler, the answer is yes.
    ``sampler``: the global tracer provider's unless given.
    """
    if sampler is None:
        sampler = getattr(trace.get_tracer_provider(), "sampler", None)
    if not isinstance(sampler, RecordWhenExported) or sampler.exporting:
        return True
    parent = carrier.get("traceparent")
    # W3C traceparent: version-traceid-spanid-flags; bit 0 of the flags is "sampled".
    return parent is not None and len(parent) == 55 and parent[-1] in "13579bdf"


def _exporter(env: Mapping[str, str]) -> SpanExporter | None:
    choice = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not choice and (
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        choice = "otlp"
    if choice in ("", "none"):
        return None
    if choice == "console":
        return ConsoleSpanExporter()
    if choice == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
        except ImportError:
            _log.warning(
                "OTEL_TRACES_EXPORTER=otlp but the exporter is not installed; "
                "install the 'otlp' extra (swift-trainer[otlp]). Traces are not exported.",
            )
            return None
        exporter: SpanExporter = OTLPSpanExporter()
        return exporter
    _log.warning("unknown OTEL_TRACES_EXPORTER %r; traces are not exported", choice)
    return None


def setup_tracing(
    service_name: str,
    *,
    env: Mapping[str, str] | None = None,
    processor: SpanProcessor | None = None,
) -> TracerProvider:
    """Install the global tracer provider once per process; later calls reuse it.

    ``processor`` lets tests attach an in-memory exporter.
    """
    global _configured  # noqa: PLW0603 - the OpenTelemetry provider is process-global
    current = trace.get_tracer_provider()
    if _configured and isinstance(current, TracerProvider):
        if processor is not None:
            current.add_span_processor(processor)
            if isinstance(current.sampler, RecordWhenExported):
                current.sampler.exporting = True
        return current
    source = os.environ if env is None else env
    name = source.get("OTEL_SERVICE_NAME") or service_name
    exporter = _exporter(source)
    resource = Resource.create({"service.name": name})
    if source.get("OTEL_TRACES_SAMPLER"):
        provider = TracerProvider(resource=resource)  # the SDK reads the choice itself
    else:
        exporting = exporter is not None or processor is not None
        provider = TracerProvider(
            resource=resource, sampler=RecordWhenExported(exporting=exporting)
        )
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if processor is not None:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _configured = True
    return provider
