"""Trace context in NATS headers, so one trace spans api, handler, store, relay and runner."""

from __future__ import annotations

from opentelemetry import propagate
from opentelemetry.context import Context


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Headers carrying the current trace context (W3C ``traceparent``/``tracestate``)."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: dict[str, str] | None) -> Context:
    return propagate.extract(headers or {})


def trace_carrier() -> dict[str, str]:
    """The current trace context alone, as stored in event metadata."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
