"""Following the EVENTS stream: in global order, in batches, resumable, poison-proof.

Projections (scheduler, read models) follow the whole log with an ordered consumer: no
server-side state, gaps are detected and repaired by the client, and a restart replays from
the beginning (or from a remembered stream sequence), skipping what the projection has
already applied (positions are strictly increasing, so ``position <= applied`` is a
redelivery). A message that cannot be decoded is logged and counted, never raised: one bad
message must not stop a projection forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from ..core.errors import SwiftTrainerError
from ..core.store import RecordedEvent
from ..core.tasks import cancel_and_wait, unsubscribe_quietly
from . import subjects
from .connection import retry_transient
from .messages import decode_event_envelope
from .relay import POSITION_HEADER

_log = logging.getLogger(__name__)

BatchHandler = Callable[[Sequence[RecordedEvent]], Awaitable[None]]


async def _position_at(js: JetStreamContext, seq: int) -> int | None:
    try:
        msg = await js.get_msg(subjects.EVENTS_STREAM, seq=seq)
    except NotFoundError:
        return None
    return int((msg.headers or {}).get(POSITION_HEADER, "0"))


async def first_seq_after(js: JetStreamContext, position: int, first: int, last: int) -> int:
    """The first stream sequence whose event position is above ``position``.

    Positions grow with the stream sequence (the relay publishes in order), so a binary
    search over ``get_msg`` finds it in log2(n) requests instead of replaying the stream.
    A gap (deleted message) makes the search fall back to an earlier start, which is safe:
    the feed skips what it has applied anyway.
    """
    low, high = first, last + 1
    while low < high:
        middle = (low + high) // 2
        found = await _position_at(js, middle)
        if found is None:
            return first
        if found <= position:
            low = middle + 1
        else:
            high = middle
    return low


class EventFeed:
    """Delivers stored events to ``handle`` in position order, batching what is queued up."""

    def __init__(
        self,
        nc: Client,
        handle: BatchHandler,
        *,
        subject: str = subjects.EVENTS_ALL,
        after_position: int = 0,
        start_seq: int | None = None,
        max_batch: int = 512,
        name: str = "feed",
    ) -> None:
        self.nc = nc
        self.handle = handle
        self.subject = subject
        self.position = after_position
        self.start_seq = start_seq
        self.max_batch = max_batch
        self.name = name
        self.malformed = 0
        self.stream_seq = 0
        self.caught_up = asyncio.Event()
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._sub: object | None = None
        self._pending_at_start = 0

    async def start(self) -> None:
        await retry_transient(self._subscribe, f"event feed {self.name}")

    async def _subscribe(self) -> None:
        js = self.nc.jetstream()
        info = await js.stream_info(subjects.EVENTS_STREAM)
        self._pending_at_start = info.state.last_seq
        if self.start_seq is None and self.position > 0 and info.state.last_seq:
            self.start_seq = await first_seq_after(
                js,
                self.position,
                info.state.first_seq,
                info.state.last_seq,
            )
        if self._pending_at_start == 0 or (self.start_seq or 1) > self._pending_at_start:
            self.caught_up.set()
        policy = DeliverPolicy.BY_START_SEQUENCE if self.start_seq else DeliverPolicy.ALL

        async def on_message(msg: Msg) -> None:
            await self._queue.put(msg)

        self._sub = await js.subscribe(
            self.subject,
            stream=subjects.EVENTS_STREAM,
            cb=on_message,
            ordered_consumer=True,
            config=ConsumerConfig(opt_start_seq=self.start_seq) if self.start_seq else None,
            deliver_policy=policy,
            idle_heartbeat=5.0,
            pending_msgs_limit=1_000_000,
        )
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"event-feed-{self.name}")

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            events: list[RecordedEvent] = []
            for msg in batch:
                if msg.metadata is not None:
                    self.stream_seq = max(self.stream_seq, msg.metadata.sequence.stream)
                try:
                    event = decode_event_envelope(msg.data).to_recorded()
                except SwiftTrainerError as exc:
                    self.malformed += 1
                    _log.warning(
                        "%s: skipped undecodable message on %s: %s", self.name, msg.subject, exc
                    )
                    continue
                if event.position > self.position:
                    events.append(event)
            if events:
                await self._deliver(events)
            if self.stream_seq >= self._pending_at_start and self._queue.empty():
                self.caught_up.set()

    async def _deliver(self, events: list[RecordedEvent]) -> None:
        """Hand a batch over, retrying with backoff: a projection must not skip events."""
        delay = 0.1
        while True:
            try:
                await self.handle(events)
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception(
                    "%s: applying events up to %s failed; retrying", self.name, events[-1].position
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                self.position = events[-1].position
                return

    async def wait_caught_up(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            await self.caught_up.wait()

    async def stop(self) -> None:
        await unsubscribe_quietly(self._sub)
        if self._task is not None:
            await cancel_and_wait(self._task)
