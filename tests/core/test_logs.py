"""JSON logs carry the trace and span they were written in; a bad LOG_FORMAT is refused."""

from __future__ import annotations

import io
import json
import logging
from logging.handlers import RotatingFileHandler
from pathlib import Path

import pytest
from opentelemetry import trace

from swift_trainer.core.logs import LOG_FILE_BYTES, file_handler, log_handler
from swift_trainer.core.settings import SettingsError, load_settings
from swift_trainer.core.telemetry import setup_tracing


def test_json_lines_carry_trace_and_span_ids() -> None:
    setup_tracing("test")
    stream = io.StringIO()
    logger = logging.getLogger("swift_trainer.test_logs")
    logger.propagate = False
    logger.addHandler(log_handler("json", stream))
    try:
        with trace.get_tracer("test").start_as_current_span("work") as span:
            logger.warning("inside %s", "a span")
        logger.warning("outside")
    finally:
        logger.handlers.clear()
        logger.propagate = True
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    context = span.get_span_context()
    assert inside["message"] == "inside a span"
    assert inside["level"] == "WARNING"
    assert inside["logger"] == "swift_trainer.test_logs"
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert outside["trace_id"] == ""


def test_log_format_is_a_setting() -> None:
    assert load_settings({"LOG_FORMAT": "JSON"}).log_format == "json"
    assert load_settings({}).log_format == "text"
    with pytest.raises(SettingsError, match="LOG_FORMAT"):
        load_settings({"LOG_FORMAT": "xml"})


def test_log_dir_adds_a_rotating_file_per_command(tmp_path: Path) -> None:
    """The seed's LOG_DIR: unset, logs go to stderr only; set, `swift-trainer handler` (for
    one) also writes swift-trainer-handler.log there, rotated by size."""
    assert load_settings({}).log_dir is None
    assert load_settings({"LOG_DIR": str(tmp_path)}).log_dir == str(tmp_path)
    handler = file_handler("text", tmp_path / "logs" / "swift-trainer-handler.log")
    assert isinstance(handler, RotatingFileHandler)
    assert handler.maxBytes == LOG_FILE_BYTES
    logger = logging.getLogger("swift_trainer.test_log_dir")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("to the file")
    finally:
        logger.handlers.clear()
        logger.propagate = True
        handler.close()
    text = (tmp_path / "logs" / "swift-trainer-handler.log").read_text()
    assert "WARNING swift_trainer.test_log_dir: to the file" in text
