"""A server span per HTTP request, so a job's trace starts at ``POST /jobs`` and the
command it sends is its child.

The span is started before any attribute is gathered. When the sampler does not record
it (the default while nothing is exported), the request pays for ids and context only:
no attributes, no wrapped ``send``. The trace context still flows to the commands the
request sends, and an incoming ``traceparent`` is still honoured.

Probes and operator pages (health, ``/metrics``, docs) are left out: they are polled every
few seconds and would bury the requests worth following.
"""

from __future__ import annotations

import re
from typing import Final

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import context, propagate, trace
from opentelemetry.instrumentation.asgi import collect_request_attributes, set_status_code
from opentelemetry.trace import SpanKind, Status, StatusCode

UNTRACED: Final = [r"/metrics$", r"^/docs", r"^/schema", r"/health(/ready)?$"]
_UNTRACED: Final = re.compile("|".join(f"(?:{pattern})" for pattern in UNTRACED))
_TRACE_HEADERS: Final = frozenset({b"traceparent", b"tracestate", b"baggage"})


class HttpTracing:
    """Route middleware: one ``SERVER`` span named ``{method} {path}`` per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._tracer = trace.get_tracer(__name__)
        #: Per route template: whether its requests are traced (decided once).
        self._traced: dict[str, bool] = {}

    def _is_traced(self, scope: Scope) -> bool:
        template = scope.get("path_template") or scope["path"]
        traced = self._traced.get(template)
        if traced is None:
            traced = self._traced[template] = _UNTRACED.search(template) is None
        return traced

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or not self._is_traced(scope):
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _TRACE_HEADERS
        }
        parent = propagate.extract(carrier) if carrier else None
        span = self._tracer.start_span(
            f"{scope['method']} {scope['path']}", context=parent, kind=SpanKind.SERVER
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        try:
            if not span.is_recording():
                await self.app(scope, receive, send)
                return
            span.set_attributes(collect_request_attributes(scope))  # type: ignore[no-untyped-call]

            async def traced_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    set_status_code(span, message["status"])  # type: ignore[no-untyped-call]
                await send(message)

            try:
                await self.app(scope, receive, traced_send)
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, repr(exc)))
                raise
        finally:
            context.detach(token)
            span.end()
