"""The pure planner's edges that the backend contract does not reach."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swift_trainer.core import events as e
from swift_trainer.core.queue_processor import QueueProcessorState
from swift_trainer.projections.read_models import InvalidCursor, Limits
from swift_trainer.projections.read_models.projection import (
    decode_cursor,
    decode_recorded,
    encode_cursor,
    fresh_events,
    from_micros,
    plan_batch,
    summarise_payload,
    to_micros,
)

from .history import T0, History


@given(st.integers(min_value=0, max_value=2**62))
def test_cursor_round_trip(position: int) -> None:
    assert decode_cursor(encode_cursor(position)) == position


@pytest.mark.parametrize("cursor", ["", "abc", "am9iczo", "am9iczoteA", "!!!", "MTIz"])
def test_foreign_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(InvalidCursor) as caught:
        decode_cursor(cursor)
    assert caught.value.code == "invalid_cursor"


@given(st.datetimes(timezones=st.just(UTC)))
def test_micros_round_trip_exactly(moment: datetime) -> None:
    assert from_micros(to_micros(moment)) == moment


def test_micros_respect_the_offset_and_refuse_naive_times() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert to_micros(T0.astimezone(plus_two)) == to_micros(T0)
    with pytest.raises(ValueError, match="timezone"):
        to_micros(T0.replace(tzinfo=None))


def test_fresh_events_drop_everything_at_or_below_the_high_mark() -> None:
    h = History()
    h.running("a")
    h.progress("a", 1)
    r = h.records
    assert fresh_events([r[3], r[1], r[4], r[4], r[2]], applied=2) == [r[3], r[4]]
    assert fresh_events(r, applied=r[-1].position) == []


def test_long_text_keeps_its_telling_end() -> None:
    failed = e.JobFailed(
        at=T0,
        job_id="a",
        attempt=1,
        exit_code=1,
        reason="r" * 3000,
        stderr_tail="x" * 3000 + "OOM",
    )
    data = summarise_payload(failed)
    assert data["reason"].startswith("rrr")
    assert data["reason"].endswith("…")
    assert data["stderr_tail"].endswith("OOM")
    assert data["stderr_tail"].startswith("…")
    assert set(data) == {"attempt", "exit_code", "reason", "stderr_tail"}


def test_plan_is_per_job_and_leaves_its_inputs_alone() -> None:
    h = History()
    h.running("a")
    for step in range(1, 4):
        h.progress("a", step, loss=1.0)
    decoded = [decode_recorded(r) for r in h.records]
    folds: dict[str, object] = {}
    plan = plan_batch(decoded, folds={}, processor=QueueProcessorState(), limits=Limits())
    assert list(plan.jobs) == ["a"]
    change = plan.jobs["a"]
    assert (change.before, change.reset, len(change.events), len(change.metrics)) == (
        None,
        False,
        len(h.records),
        3,
    )
    assert change.summary is not None
    assert change.summary.progress is not None
    assert change.summary.progress.step == 3
    assert plan.applied == h.records[-1].position
    assert folds == {}
    with pytest.raises(ValueError, match="at least one"):
        plan_batch([], folds={}, processor=QueueProcessorState(), limits=Limits())
