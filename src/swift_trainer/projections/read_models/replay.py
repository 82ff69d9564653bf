"""Catching a read model up with the event store, and rebuilding it from nothing.

The store is the only source of truth, so any read model can be thrown away and replayed;
the contract suite checks that a rebuild equals the state the live projection reached.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final, Protocol

from swift_trainer.core.gc_pause import collector_paused
from swift_trainer.core.store import RecordedEvent

from .interface import ReadModel

#: Events per read and per Redis commit in a rebuild: large enough that round trips and
#: per-commit costs vanish, small enough to hold a few MiB (about 500 jobs' histories).
REBUILD_BATCH: Final = 5000


class EventLog(Protocol):
    """The one thing replay needs of an event store (``core.store.EventStore`` has it)."""

    async def read_all(
        self,
        *,
        after_position: int = 0,
        limit: int = 1000,
    ) -> list[RecordedEvent]: ...


async def catch_up(store: EventLog, read_model: ReadModel, *, batch_size: int = 1000) -> int:
    """Apply everything after the read model's applied position; returns how many were new.

    Resuming from ``applied_position()`` rather than a separate tracking record is what
    makes a restart exact: the position was stored with the changes it stands for. Only a
    long catch-up (more than one batch) pauses the garbage collector: a short one, as after
    a replica's conflict, is not worth the full collection that ends a pause.
    """
    position = await read_model.applied_position()
    batch = await store.read_all(after_position=position, limit=batch_size)
    if len(batch) < batch_size:
        return await _apply_from(store, read_model, batch, batch_size)
    with collector_paused():
        return await _apply_from(store, read_model, batch, batch_size)


async def _apply_from(
    store: EventLog, read_model: ReadModel, batch: list[RecordedEvent], batch_size: int
) -> int:
    applied = 0
    while batch:
        # The next batch is read while this one is applied: the store's and the read
        # model's round trips overlap instead of adding up (a rebuild is all round trips).
        following = asyncio.ensure_future(
            store.read_all(after_position=batch[-1].position, limit=batch_size)
        )
        try:
            applied += await read_model.apply_many(batch)
        except BaseException:
            following.cancel()
            with contextlib.suppress(BaseException):
                await following
            raise
        batch = await following
    return applied


async def rebuild(
    store: EventLog,
    read_model: ReadModel,
    *,
    batch_size: int = REBUILD_BATCH,
    keep_feeds: bool = False,
) -> int:
    """Wipe and replay the whole store; returns how many events were applied."""
    await read_model.wipe(keep_feeds=keep_feeds)
    return await catch_up(store, read_model, batch_size=batch_size)
