"""The usage ledger kept caught up with the event store, for reports and the GPU counter.

A cache, never an authority: it holds the fold of the store's events up to a position and,
when asked, folds what the store appended since (``core/usage.py`` is the fold). Only the
event types the fold reads are decoded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from ..core import events as e
from ..core.errors import SwiftTrainerError
from ..core.store import EventStore
from ..core.usage import UsageLedger

_log = logging.getLogger(__name__)

#: The job events the usage fold reads; the rest are skipped undecoded.
USAGE_TYPES: Final = frozenset(
    cls.__name__
    for cls in (
        e.JobSubmitted,
        e.JobQueued,
        e.JobRequeued,
        e.JobScheduled,
        e.JobStarted,
        e.CheckpointSaved,
        e.StopRequested,
        e.JobSucceeded,
        e.JobFailed,
        e.JobLost,
        e.AssignmentRejected,
        e.JobStopped,
        e.JobPaused,
        e.JobCancelled,
    )
)


class UsageView:
    """``await view.ledger()``: the fold of every stored event, caught up on each call."""

    def __init__(self, store: EventStore, *, batch: int = 5000) -> None:
        self.store = store
        self.batch = batch
        self.position = 0
        self._ledger = UsageLedger()
        self._lock = asyncio.Lock()

    async def ledger(self) -> UsageLedger:
        async with self._lock:
            # Everything up to the head is read once the last batch falls short; the store
            # only hands over the types the fold reads (about half of a busy log).
            head = await self.store.last_position()
            while True:
                records = await self.store.read_all(
                    after_position=self.position, limit=self.batch, types=USAGE_TYPES
                )
                for record in records:
                    self.position = record.position
                    try:
                        event = e.decode_event(record.type, record.payload, record.schema_version)
                    except SwiftTrainerError as exc:
                        _log.warning("usage skips event %d: %s", record.position, exc)
                        continue
                    self._ledger.apply(event)
                if len(records) < self.batch:
                    self.position = max(self.position, head)
                    return self._ledger
