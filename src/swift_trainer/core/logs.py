"""Process logging: plain text for people, or one JSON object per line (``LOG_FORMAT=json``)
for a log pipeline, each record carrying the ``trace_id`` and ``span_id`` it was written in.

With the ids in every line, a log search and the trace UI meet: the trace of a failed job
leads to its log lines and back.
"""

from __future__ import annotations

import logging
import sys
from typing import Final, TextIO

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

LOG_FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TraceContextFilter(logging.Filter):
    """Adds the current span's ``trace_id`` and ``span_id`` (hex, empty outside a span)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        record.trace_id = f"{context.trace_id:032x}" if context.is_valid else ""
        record.span_id = f"{context.span_id:016x}" if context.is_valid else ""
        return True


def log_handler(log_format: str, stream: TextIO | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(TraceContextFilter())
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(trace_id)s %(span_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(level: str, log_format: str = "text") -> None:
    """Replace the root logger's handlers with one of ``log_format`` on stderr."""
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        handlers=[log_handler(log_format)],
        force=True,
    )
