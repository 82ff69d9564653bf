"""Which aggregate a command belongs to, and how to rebuild its state from stored events.

The command handler is generic: it asks this module for the stream of a command, folds the
stream's events into state and lets the aggregate decide. Adding an aggregate means adding
one entry here, not touching the bus.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TypeAlias

import msgspec

from . import commands as c
from . import events as e
from .access import (
    ACCESS_STREAM,
    AccessState,
    AnyAccessEvent,
    decide_access,
    decode_access_event,
    evolve_access,
)
from .fleet import FleetState, decide_fleet, evolve_fleet
from .gpu_ledger import LedgerState, decide_ledger, decode_ledger, encode_ledger, evolve_ledger
from .ids import FLEET_STREAM, GPU_LEDGER_STREAM, QUEUE_PROCESSOR_STREAM, job_stream
from .job import JobState, decide, evolve, initial_state
from .queue_processor import QueueProcessorState, decide_processor, evolve_processor
from .store import RecordedEvent
from .sweep import (
    AnySweepEvent,
    SweepState,
    decide_sweep,
    decode_sweep_event,
    evolve_sweep,
    is_sweep_stream,
    sweep_stream,
)

State: TypeAlias = (
    JobState | QueueProcessorState | LedgerState | AccessState | SweepState | FleetState
)
AnyStoredEvent: TypeAlias = e.AnyEvent | AnyAccessEvent | AnySweepEvent


def stream_of(command: c.AnyCommand) -> str:
    if isinstance(command, c.JobCommand):
        return job_stream(command.job_id)
    if isinstance(command, c.ClaimGpus | c.ReleaseGpus):
        return GPU_LEDGER_STREAM
    if isinstance(command, c.IssueKey | c.RevokeKey | c.SetQuota):
        return ACCESS_STREAM
    if isinstance(command, c.SweepCommand):
        return sweep_stream(command.sweep_id)
    if isinstance(command, c.DrainRunner | c.UndrainRunner | c.RecordGpuHealth):
        return FLEET_STREAM
    return QUEUE_PROCESSOR_STREAM


def initial(stream_id: str) -> State:
    if stream_id == QUEUE_PROCESSOR_STREAM:
        return QueueProcessorState()
    if stream_id == GPU_LEDGER_STREAM:
        return LedgerState()
    if stream_id == ACCESS_STREAM:
        return AccessState()
    if is_sweep_stream(stream_id):
        return SweepState(sweep_id=stream_id.removeprefix("sweep-"))
    if stream_id == FLEET_STREAM:
        return FleetState()
    return initial_state(stream_id.removeprefix("job-"))


def apply(state: State, event: AnyStoredEvent) -> State:
    if isinstance(state, AccessState):
        assert isinstance(event, AnyAccessEvent)
        return evolve_access(state, event)
    if isinstance(state, SweepState):
        assert isinstance(event, AnySweepEvent)
        return evolve_sweep(state, event)
    assert not isinstance(event, AnyAccessEvent | AnySweepEvent)
    if isinstance(state, FleetState):
        assert isinstance(event, e.RunnerDrained | e.RunnerUndrained | e.GpuHealthChanged)
        return evolve_fleet(state, event)
    if isinstance(state, QueueProcessorState):
        assert isinstance(event, e.QueueProcessorPaused | e.QueueProcessorResumed)
        return evolve_processor(state, event)
    if isinstance(state, LedgerState):
        assert isinstance(event, e.GpusClaimed | e.GpusReleased)
        return evolve_ledger(state, event)
    assert not isinstance(
        event,
        e.QueueProcessorPaused
        | e.QueueProcessorResumed
        | e.GpusClaimed
        | e.GpusReleased
        | e.RunnerDrained
        | e.RunnerUndrained
        | e.GpuHealthChanged,
    )
    return evolve(state, event)


def fold(stream_id: str, recorded: Sequence[RecordedEvent], state: State | None = None) -> State:
    """State of a stream after the given stored events (on top of ``state`` if given)."""
    current = initial(stream_id) if state is None else state
    for item in recorded:
        if stream_id == ACCESS_STREAM:
            current = apply(current, decode_access_event(item.type, item.payload))
        elif is_sweep_stream(stream_id):
            current = apply(current, decode_sweep_event(item.type, item.payload))
        else:
            current = apply(current, e.decode_event(item.type, item.payload, item.schema_version))
    return current


def decide_any(state: State, command: c.AnyCommand, now: datetime) -> Sequence[AnyStoredEvent]:
    if isinstance(state, AccessState):
        assert isinstance(command, c.IssueKey | c.RevokeKey | c.SetQuota)
        return decide_access(state, command, now)
    if isinstance(state, SweepState):
        assert isinstance(command, c.SweepCommand)
        return decide_sweep(state, command, now)
    assert not isinstance(command, c.IssueKey | c.RevokeKey | c.SetQuota | c.SweepCommand)
    if isinstance(state, FleetState):
        assert isinstance(command, c.DrainRunner | c.UndrainRunner | c.RecordGpuHealth)
        return decide_fleet(state, command, now)
    if isinstance(state, QueueProcessorState):
        assert isinstance(command, c.PauseQueueProcessor | c.ResumeQueueProcessor)
        return decide_processor(state, command, now)
    if isinstance(state, LedgerState):
        assert isinstance(command, c.ClaimGpus | c.ReleaseGpus)
        return decide_ledger(state, command, now)
    assert not isinstance(
        command,
        c.PauseQueueProcessor
        | c.ResumeQueueProcessor
        | c.ClaimGpus
        | c.ReleaseGpus
        | c.DrainRunner
        | c.UndrainRunner
        | c.RecordGpuHealth,
    )
    return decide(state, command, now)


def version_of(state: State) -> int:
    return state.version


def snapshot_of(state: State) -> bytes | None:
    """A snapshot of the state, for streams that grow without end (the GPU ledger only:
    a job's stream stays short, and folding it is cheaper than a second read)."""
    return encode_ledger(state) if isinstance(state, LedgerState) else None


def restore(stream_id: str, payload: bytes) -> State | None:
    """The state a snapshot of ``stream_id`` holds, or None when it cannot be used."""
    if stream_id != GPU_LEDGER_STREAM:
        return None
    try:
        return decode_ledger(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
