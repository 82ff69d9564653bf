"""Process logging: plain text for people, or one JSON object per line (``LOG_FORMAT=json``)
for a log pipeline, each record carrying the ``trace_id`` and ``span_id`` it was written in.

With the ids in every line, a log search and the trace UI meet: the trace of a failed job
leads to its log lines and back.
"""

from __future__ import annotations

import logging
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path
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


#: A log file rotates at this size, keeping ``LOG_FILE_BACKUPS`` old ones.
LOG_FILE_BYTES: Final = 50 * 1024 * 1024
LOG_FILE_BACKUPS: Final = 5


def log_handler(log_format: str, stream: TextIO | None = None) -> logging.Handler:
    return _formatted(logging.StreamHandler(stream or sys.stderr), log_format)


def file_handler(log_format: str, path: Path) -> logging.Handler:
    """A size-rotated file, so a long-lived process cannot fill the disk with its logs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = RotatingFileHandler(
        path, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8"
    )
    return _formatted(handler, log_format)


def _formatted(handler: logging.Handler, log_format: str) -> logging.Handler:
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


def configure_logging(level: str, log_format: str = "text", log_file: Path | None = None) -> None:
    """Replace the root logger's handlers with one of ``log_format`` on stderr, and a
    rotating ``log_file`` beside it when given (``LOG_DIR``)."""
    handlers = [log_handler(log_format)]
    if log_file is not None:
        handlers.append(file_handler(log_format, log_file))
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        handlers=handlers,
        force=True,
    )
