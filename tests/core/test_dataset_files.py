"""The JSONL check of uploaded datasets: ms-swift formats, line numbers, any chunking."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swift_trainer.core.dataset_files import JsonlCheck, check_record, new_file_id
from swift_trainer.core.spec import FILE_ID_PATTERN

MESSAGES = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
QUERY = {"query": "2+2?", "response": "4", "history": [], "system": "be brief"}
DPO = {**QUERY, "rejected_response": "5"}


def lines(*records: Any) -> bytes:
    return b"".join(
        (r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records
    )


def check(data: bytes, chunk: int = 7, **kw: Any) -> JsonlCheck:
    checker = JsonlCheck(**kw)
    for start in range(0, len(data), chunk):
        checker.feed(data[start : start + chunk])
    checker.finish()
    return checker


@pytest.mark.parametrize("record", [MESSAGES, QUERY, DPO])
def test_ms_swift_formats_are_accepted(record: dict[str, Any]) -> None:
    assert check_record(record) is None


@pytest.mark.parametrize(
    ("record", "why"),
    [
        ([1, 2], "expected a JSON object"),
        ({"text": "x"}, "expected 'messages', or 'query' and 'response'"),
        ({"messages": []}, "non-empty list"),
        ({"messages": ["hi"]}, "messages[0] must be an object"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"query": "q"}, "'response' must be a string"),
        ({"query": 1, "response": "r"}, "'query' must be a string"),
    ],
)
def test_other_records_are_refused_with_a_reason(record: Any, why: str) -> None:
    reason = check_record(record)
    assert reason is not None
    assert why in reason


def test_the_first_bad_line_is_named_and_blank_lines_are_skipped() -> None:
    data = lines(MESSAGES, b"", QUERY, {"text": "x"}, b"{not json")
    checker = check(data)
    assert checker.problem is not None
    assert checker.problem.startswith("line 4: expected 'messages'")
    assert checker.records == 2


def test_preference_pairs_are_counted_for_dpo() -> None:
    rejected = {**MESSAGES, "rejected_messages": [{"role": "assistant", "content": "no"}]}
    checker = check(lines(QUERY, DPO, MESSAGES, DPO, rejected))
    assert (checker.records, checker.preference_records, checker.problem) == (5, 3, None)


def test_a_last_line_without_newline_counts_and_an_empty_file_is_an_error() -> None:
    assert check(lines(QUERY) + json.dumps(MESSAGES).encode()).records == 2
    empty = check(b"\n\n")
    assert empty.problem == "the file holds no records"


def test_invalid_json_and_overlong_lines_are_errors_without_buffering_them() -> None:
    assert "line 1: not valid JSON" in (check(b"{oops\n").problem or "")
    big = json.dumps({"query": "x" * 500, "response": "y"}).encode()
    checker = check(lines(QUERY) + big + b"\n" + lines(QUERY), chunk=64, max_line_bytes=100)
    assert checker.problem == "line 2: longer than 100 bytes"
    assert len(checker._partial) == 0


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 50), st.lists(st.sampled_from([MESSAGES, QUERY, DPO]), min_size=1))
def test_chunking_never_changes_the_verdict(chunk: int, records: list[dict[str, Any]]) -> None:
    data = lines(*records, {"bad": True})
    checker = check(data, chunk=chunk)
    assert checker.records == len(records)
    assert (
        checker.problem
        == f"line {len(records) + 1}: expected 'messages', or 'query' and 'response'"
    )


def test_file_ids_match_the_spec_pattern_and_sort_by_time() -> None:
    import re

    ids = [new_file_id() for _ in range(5)]
    assert all(re.fullmatch(FILE_ID_PATTERN.split("$")[0] + "$", i) for i in ids)
    assert len(set(ids)) == 5
