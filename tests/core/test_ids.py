"""Identifiers: client job ids, time-ordered event and command ids, stream names."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swift_trainer.core.ids import (
    JOB_ID_PATTERN,
    QUEUE_PROCESSOR_STREAM,
    is_valid_job_id,
    job_stream,
    new_id,
    new_job_id,
)


@pytest.mark.parametrize(
    "job_id",
    ["training_001", "a", "A", "0", "job-1", "a_b-c", "x" * 64, "Qwen2-VL_run-3", "1-"],
)
def test_valid_job_ids(job_id: str) -> None:
    assert is_valid_job_id(job_id)


@pytest.mark.parametrize(
    "job_id",
    [
        "",
        "x" * 65,
        "-lead",
        "_lead",
        "a b",
        "a/b",
        "a.b",
        "../x",
        "a\n",
        "job\x00",
        "ünïcode",
        "a:b",
        "a*",
    ],
)
def test_invalid_job_ids(job_id: str) -> None:
    assert not is_valid_job_id(job_id)


@pytest.mark.parametrize("job_id", ["a\n", "training_001\n"])
def test_the_pattern_refuses_a_trailing_newline_when_searched_too(job_id: str) -> None:
    """Regression: msgspec *searches* with the pattern, and Python's ``$`` matches before
    a final newline, so ``"a\n"`` passed as a job id on the wire."""
    assert re.search(JOB_ID_PATTERN, job_id) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=70))
def test_job_id_validation_agrees_with_the_pattern(job_id: str) -> None:
    expected = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", job_id, flags=re.ASCII)
    assert is_valid_job_id(job_id) == bool(expected)
    assert bool(re.search(JOB_ID_PATTERN, job_id)) == bool(expected)


def test_new_id_is_32_lowercase_hex_digits_in_uuid7_layout() -> None:
    value = new_id()
    assert re.fullmatch(r"[0-9a-f]{32}", value)
    assert value[12] == "7", "version nibble"
    assert value[16] in "89ab", "RFC 9562 variant"


def test_new_id_starts_with_the_millisecond_clock() -> None:
    before = time.time_ns() // 1_000_000
    value = new_id()
    after = time.time_ns() // 1_000_000
    assert before <= int(value[:12], 16) <= after


def test_new_ids_are_time_ordered_and_unique() -> None:
    values = [new_id() for _ in range(20_000)]
    assert len(set(values)) == len(values)
    prefixes = [v[:12] for v in values]
    assert prefixes == sorted(prefixes), "the clock prefix never goes backwards"


def test_ids_from_later_milliseconds_sort_after_earlier_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([1_700_000_000_000_000_000, 1_700_000_000_001_000_000])
    monkeypatch.setattr(time, "time_ns", lambda: next(clock))
    first, second = new_id(), new_id()
    assert first < second
    assert int(first[:12], 16) == 1_700_000_000_000
    assert int(second[:12], 16) == 1_700_000_000_001


def test_new_job_id_is_a_valid_job_id() -> None:
    values = {new_job_id() for _ in range(1000)}
    assert len(values) == 1000
    for value in values:
        assert is_valid_job_id(value)
        assert re.fullmatch(r"job-[0-9a-f]{12}", value)


def test_stream_names() -> None:
    assert job_stream("training_001") == "job-training_001"
    assert QUEUE_PROCESSOR_STREAM == "queue-processor"
    assert not QUEUE_PROCESSOR_STREAM.startswith("job-"), "no job stream can collide with it"
