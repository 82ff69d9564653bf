"""Which aggregate a command belongs to, and how to rebuild its state from stored events.

The command handler is generic: it asks this module for the stream of a command, folds the
stream's events into state and lets the aggregate decide. Adding an aggregate means adding
one entry here, not touching the bus.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TypeAlias

from . import commands as c
from . import events as e
from .ids import QUEUE_PROCESSOR_STREAM, job_stream
from .job import JobState, decide, evolve, initial_state
from .queue_processor import QueueProcessorState, decide_processor, evolve_processor
from .store import RecordedEvent

State: TypeAlias = JobState | QueueProcessorState


def stream_of(command: c.AnyCommand) -> str:
    if isinstance(command, c.JobCommand):
        return job_stream(command.job_id)
    return QUEUE_PROCESSOR_STREAM


def initial(stream_id: str) -> State:
    if stream_id == QUEUE_PROCESSOR_STREAM:
        return QueueProcessorState()
    return initial_state(stream_id.removeprefix("job-"))


def apply(state: State, event: e.AnyEvent) -> State:
    if isinstance(state, QueueProcessorState):
        assert isinstance(event, e.QueueProcessorPaused | e.QueueProcessorResumed)
        return evolve_processor(state, event)
    assert not isinstance(event, e.QueueProcessorPaused | e.QueueProcessorResumed)
    return evolve(state, event)


def fold(stream_id: str, recorded: Sequence[RecordedEvent], state: State | None = None) -> State:
    """State of a stream after the given stored events (on top of ``state`` if given)."""
    current = initial(stream_id) if state is None else state
    for item in recorded:
        current = apply(current, e.decode_event(item.type, item.payload, item.schema_version))
    return current


def decide_any(state: State, command: c.AnyCommand, now: datetime) -> Sequence[e.AnyEvent]:
    if isinstance(state, QueueProcessorState):
        assert isinstance(command, c.PauseQueueProcessor | c.ResumeQueueProcessor)
        return decide_processor(state, command, now)
    assert not isinstance(command, c.PauseQueueProcessor | c.ResumeQueueProcessor)
    return decide(state, command, now)


def version_of(state: State) -> int:
    return state.version
