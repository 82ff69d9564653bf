"""Keeps a read model up to date from the EVENTS stream, and rebuilds it on demand.

On start the read model first catches up from the event store when one is at hand (a
bulk read is much faster than replaying JetStream message by message, and an in-memory
read model starts empty in every process), then follows JetStream from where it stands.
A ``ReadModelConflict`` (someone wiped or rebuilt the same Redis prefix) is answered with
another catch-up, never with a hole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from nats.aio.client import Client

from ..bus.feed import EventFeed
from ..core.store import EventStore, RecordedEvent
from .read_models.interface import ReadModel, ReadModelConflict
from .read_models.replay import catch_up

_log = logging.getLogger(__name__)


class ReadModelService:
    def __init__(
        self, nc: Client, read_model: ReadModel, *, store: EventStore | None = None
    ) -> None:
        self.nc = nc
        self.read_model = read_model
        self.store = store
        self.feed: EventFeed | None = None
        self.position = 0
        self._advanced = asyncio.Condition()

    async def _apply(self, events: Sequence[RecordedEvent]) -> None:
        try:
            await self.read_model.apply_many(events)
        except ReadModelConflict:
            if self.store is None:
                raise
            _log.warning("read model moved under us; catching up from the event store")
            await catch_up(self.store, self.read_model)
        async with self._advanced:
            self.position = max(self.position, events[-1].position)
            self._advanced.notify_all()

    async def wait_applied(self, position: int, timeout: float) -> bool:
        """Wait until this projection has applied ``position``; False after ``timeout``.

        Woken by the projection itself, so a request waiting for its own write costs no
        polling of the read model (with Redis, a poll is a round trip).
        """
        try:
            async with asyncio.timeout(timeout), self._advanced:
                await self._advanced.wait_for(lambda: self.position >= position)
        except TimeoutError:
            return False
        return True

    async def start(self) -> None:
        if self.store is not None:
            applied = await catch_up(self.store, self.read_model)
            _log.info("read model caught up from the event store (%d events)", applied)
        self.position = await self.read_model.applied_position()
        self.feed = EventFeed(
            self.nc,
            self._apply,
            after_position=await self.read_model.applied_position(),
            name="read-model",
        )
        await self.feed.start()

    async def wait_caught_up(self, timeout: float = 30.0) -> None:
        if self.feed is not None:
            await self.feed.wait_caught_up(timeout)

    async def stop(self) -> None:
        if self.feed is not None:
            await self.feed.stop()
            self.feed = None
