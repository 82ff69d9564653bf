"""A server span per HTTP request (OpenTelemetry's ASGI instrumentation through Litestar's
plugin), so a job's trace starts at ``POST /jobs`` and the command it sends is its child.

Probes and operator pages (health, ``/metrics``, docs) are left out: they are polled every
few seconds and would bury the requests worth following.
"""

from __future__ import annotations

from typing import Final

from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

UNTRACED: Final = [r"/metrics$", r"^/docs", r"^/schema", r"/health(/ready)?$"]


def http_tracing() -> OpenTelemetryPlugin:
    # One span per request, without a child per ASGI message sent or received.
    return OpenTelemetryPlugin(
        OpenTelemetryConfig(exclude=UNTRACED, exclude_spans=["receive", "send"])
    )
