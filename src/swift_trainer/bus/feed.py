"""Following the EVENTS stream: in global order, in batches, resumable, poison-proof.

Projections (scheduler, read models) follow the whole log with an ordered consumer: no
server-side state, gaps are detected and repaired by the client, and a restart replays from
the beginning (or from a remembered stream sequence), skipping what the projection has
already applied (positions are strictly increasing, so ``position <= applied`` is a
redelivery). A message that cannot be decoded is logged and counted, never raised: one bad
message must not stop a projection forever.

Feeds of one connection that follow the same subject share one ordered consumer (a
``_Tap``): ``up`` runs the read models, the scheduler and the experiments in one process, and
each message was delivered, parsed and decoded once per feed. The tap decodes it once and
hands the same event to every feed's queue; each feed still applies at its own pace and
skips what it has applied. A feed that starts later joins the tap when nothing it needs has
gone by: the tap keeps its last events for that; otherwise the feed gets a consumer of its
own.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

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
#: What a tap hands each feed: the stream sequence and the event (None: undecodable).
_Item = tuple[int, RecordedEvent | None]

#: Events a tap keeps after handing them out, so a feed that starts a little later joins.
_TAP_RECENT: Final = 1024


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


class _Tap:
    """One ordered consumer of ``subject``; every message decoded once for all its feeds."""

    def __init__(self, nc: Client, subject: str, floor: int) -> None:
        self.nc = nc
        self.subject = subject
        self.feeds: list[EventFeed] = []
        #: Every event above this position was handed out and is in ``recent``, or is
        #: still to come: a feed that has applied ``floor`` or more may join.
        self.floor = floor
        self.recent: deque[tuple[int, RecordedEvent]] = deque()
        self.last_seq = 0
        self._sub: object | None = None
        self.closed = False

    async def start(self, start_seq: int | None) -> None:
        # What comes before the start is passed: a feed that would start there joins.
        self.last_seq = (start_seq or 1) - 1
        js = self.nc.jetstream()
        policy = DeliverPolicy.BY_START_SEQUENCE if start_seq else DeliverPolicy.ALL
        self._sub = await js.subscribe(
            self.subject,
            stream=subjects.EVENTS_STREAM,
            cb=self._on_message,
            ordered_consumer=True,
            config=ConsumerConfig(opt_start_seq=start_seq) if start_seq else None,
            deliver_policy=policy,
            idle_heartbeat=5.0,
            pending_msgs_limit=1_000_000,
        )

    async def _on_message(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream if msg.metadata is not None else self.last_seq
        self.last_seq = max(self.last_seq, seq)
        event: RecordedEvent | None
        try:
            event = decode_event_envelope(msg.data).to_recorded()
        except SwiftTrainerError as exc:
            event = None
            names = ", ".join(feed.name for feed in self.feeds)
            _log.warning("%s: skipped undecodable message on %s: %s", names, msg.subject, exc)
        else:
            self.recent.append((seq, event))
            if len(self.recent) > _TAP_RECENT:
                self.floor = max(self.floor, self.recent.popleft()[1].position)
        for feed in self.feeds:
            feed.take((seq, event))

    def serves(self, position: int, start_seq: int | None) -> bool:
        """Whether a feed that has applied up to ``position`` misses nothing by joining,
        and waits for nothing it would not wait for on its own (``start_seq``: where its
        own consumer would start)."""
        return (
            not self.closed
            and position >= self.floor
            and (start_seq is None or self.last_seq + 1 >= start_seq)
        )

    def attach(self, feed: EventFeed) -> None:
        """Hand ``feed`` what it lacks of the recent events, then every event to come."""
        for seq, event in self.recent:
            if event.position > feed.position:
                feed.take((seq, event))
        # Everything handed out so far has reached the feed, or it had applied it.
        feed.stream_seq = max(feed.stream_seq, self.last_seq)
        self.feeds.append(feed)

    async def detach(self, feed: EventFeed) -> None:
        if feed in self.feeds:
            self.feeds.remove(feed)
        if not self.feeds:
            self.closed = True
            shared = _taps.get(self.nc)
            if shared is not None and shared.get(self.subject) is self:
                del shared[self.subject]
            await unsubscribe_quietly(self._sub)


#: The shared tap of each connection, by subject.
_taps: weakref.WeakKeyDictionary[Client, dict[str, _Tap]] = weakref.WeakKeyDictionary()


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
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._tap: _Tap | None = None
        self._pending_at_start = 0

    async def start(self) -> None:
        await retry_transient(self._subscribe, f"event feed {self.name}")

    async def _subscribe(self) -> None:
        js = self.nc.jetstream()
        info = await js.stream_info(subjects.EVENTS_STREAM)
        self._pending_at_start = info.state.last_seq
        chosen = self.start_seq is not None
        if self.start_seq is None and self.position > 0 and info.state.last_seq:
            self.start_seq = await first_seq_after(
                js,
                self.position,
                info.state.first_seq,
                info.state.last_seq,
            )
        if self._pending_at_start == 0 or (self.start_seq or 1) > self._pending_at_start:
            self.caught_up.set()
        shared = _taps.setdefault(self.nc, {})
        tap = shared.get(self.subject)
        if tap is None or chosen or not tap.serves(self.position, self.start_seq):
            # A consumer of its own; it becomes the shared tap unless a live one exists.
            tap = _Tap(self.nc, self.subject, floor=self.position)
            await tap.start(self.start_seq)
            shared.setdefault(self.subject, tap)
        tap.attach(self)
        self._tap = tap
        if self.stream_seq >= self._pending_at_start and self._queue.empty():
            self.caught_up.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"event-feed-{self.name}")

    def take(self, item: _Item) -> None:
        """From the tap: one message of the stream, decoded (None when it was not)."""
        self._queue.put_nowait(item)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            events: list[RecordedEvent] = []
            for seq, event in batch:
                self.stream_seq = max(self.stream_seq, seq)
                if event is None:
                    self.malformed += 1
                elif event.position > self.position:
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
        if self._tap is not None:
            await self._tap.detach(self)
            self._tap = None
        if self._task is not None:
            await cancel_and_wait(self._task)
