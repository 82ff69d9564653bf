"""OpenTelemetry setup, configured only by the standard ``OTEL_*`` variables.

A real SDK tracer provider is installed even when nothing is exported, so trace context is
still created and propagated through NATS headers (logs and events carry trace ids that an
operator can search for); exporting is off unless ``OTEL_TRACES_EXPORTER`` or an OTLP
endpoint is set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

_log = logging.getLogger(__name__)
_configured = False


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
        return current
    source = os.environ if env is None else env
    name = source.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    exporter = _exporter(source)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if processor is not None:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _configured = True
    return provider
