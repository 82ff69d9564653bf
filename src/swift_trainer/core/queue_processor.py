"""The queue processor switch: whether the scheduler places queued jobs.

Operators start and stop the queue processor; pausing is an event, so a restarted
scheduler (or a standby taking over) keeps the operator's choice.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from . import commands as c
from . import events as e


class QueueProcessorState(msgspec.Struct, frozen=True):
    paused: bool = False
    reason: str = ""
    version: int = 0
    changed_at: datetime | None = None


def decide_processor(
    state: QueueProcessorState,
    command: c.ProcessorCommand,
    now: datetime,
) -> list[e.ProcessorEvent]:
    """Pausing a paused processor (or resuming a running one) records nothing."""
    match command:
        case c.PauseQueueProcessor(reason=reason):
            return [] if state.paused else [e.QueueProcessorPaused(at=now, reason=reason)]
        case c.ResumeQueueProcessor():
            return [e.QueueProcessorResumed(at=now)] if state.paused else []
    raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover


def evolve_processor(state: QueueProcessorState, event: e.ProcessorEvent) -> QueueProcessorState:
    match event:
        case e.QueueProcessorPaused(reason=reason, at=at):
            return QueueProcessorState(True, reason, state.version + 1, at)
        case e.QueueProcessorResumed(at=at):
            return QueueProcessorState(False, "", state.version + 1, at)
    raise AssertionError(f"unhandled event {event!r}")  # pragma: no cover
