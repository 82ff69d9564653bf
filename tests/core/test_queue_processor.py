"""The queue processor switch: pausing and resuming are events, and idempotent."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.queue_processor import (
    QueueProcessorState,
    decide_processor,
    evolve_processor,
)

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def run(
    state: QueueProcessorState, command: c.ProcessorCommand, now: datetime = T0
) -> tuple[QueueProcessorState, list[e.ProcessorEvent]]:
    events = decide_processor(state, command, now)
    for event in events:
        state = evolve_processor(state, event)
    return state, events


def test_a_new_processor_is_running() -> None:
    state = QueueProcessorState()
    assert (state.paused, state.reason, state.version, state.changed_at) == (False, "", 0, None)


def test_pause_records_why_and_when() -> None:
    state, events = run(QueueProcessorState(), c.PauseQueueProcessor(reason="GPU maintenance"))
    assert events == [e.QueueProcessorPaused(at=T0, reason="GPU maintenance")]
    assert state == QueueProcessorState(
        paused=True, reason="GPU maintenance", version=1, changed_at=T0
    )


def test_resume_clears_the_reason() -> None:
    paused, _ = run(QueueProcessorState(), c.PauseQueueProcessor(reason="x"))
    later = T0 + timedelta(minutes=5)
    state, events = run(paused, c.ResumeQueueProcessor(), later)
    assert events == [e.QueueProcessorResumed(at=later)]
    assert state == QueueProcessorState(paused=False, reason="", version=2, changed_at=later)


def test_pausing_a_paused_processor_records_nothing() -> None:
    paused, _ = run(QueueProcessorState(), c.PauseQueueProcessor(reason="first"))
    state, events = run(paused, c.PauseQueueProcessor(reason="second"))
    assert events == []
    assert state == paused
    assert state.reason == "first"


def test_resuming_a_running_processor_records_nothing() -> None:
    state, events = run(QueueProcessorState(), c.ResumeQueueProcessor())
    assert events == []
    assert state == QueueProcessorState()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.booleans(), max_size=30))
def test_any_sequence_ends_as_the_last_command_says_and_replays(pauses: list[bool]) -> None:
    state = QueueProcessorState()
    history: list[e.ProcessorEvent] = []
    for i, pause in enumerate(pauses):
        command: c.ProcessorCommand = (
            c.PauseQueueProcessor(reason=f"r{i}") if pause else c.ResumeQueueProcessor()
        )
        before = state
        state, events = run(state, command, T0 + timedelta(seconds=i))
        assert len(events) == (0 if before.paused == pause else 1)
        history += events
        for event in events:
            assert e.decode_event(e.event_type(event), e.encode_event(event)) == event
    assert state.paused == (pauses[-1] if pauses else False)
    assert state.version == len(history)
    # Paused and resumed strictly alternate: a redelivered command records nothing.
    kinds = [type(x) for x in history]
    assert all(a is not b for a, b in itertools.pairwise(kinds))
    replayed = QueueProcessorState()
    for event in history:
        replayed = evolve_processor(replayed, event)
    assert replayed == state
