"""The outbox relay: every stored event reaches JetStream once, in global order.

Where to resume comes from JetStream itself: the last message of the EVENTS stream carries
the store position it was published for. A relay that died between the SQL commit and the
publish (or between the publish and any bookkeeping) therefore resumes exactly after what
the stream really holds, so consumers never see an event twice; ``Nats-Msg-Id`` (the
event id) deduplicates whatever slips through inside the duplicate window anyway.

Publishes are pipelined for throughput, and each carries ``Nats-Expected-Last-Msg-Id`` =
the previous event's id. If one publish in a pipeline fails, every later one is refused by
the server instead of landing out of order; the relay re-reads the stream's tail and goes
on from there.

JetStream may flush to disk on an interval, so a server back from a power cut can lack its
newest messages (their sequence numbers stay, as deleted). After every reconnect the relay
reads the tail again, walking back past deleted sequences to the last message held, and
publishes the rest from the store; its first publish there expects no last id, because
the server knows none.

The position published so far is also written to the store's tracking table
(``get_tracking("relay")``) for monitoring the lag.

A handler in the same process hands the relay the events it has just appended (``offer``),
exactly as the store returned them, so the relay publishes those without reading them back;
it reads the store for any position it was not offered (another process appended it, or the
offer came after a gap), so the store stays the outbox and the only source of what to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import Header, PubAck
from nats.js.errors import NotFoundError
from opentelemetry import trace

from ..core.ids import new_id
from ..core.store import AppendResult, EventStore, RecordedEvent
from ..core.tasks import unsubscribe_quietly
from ..core.telemetry import records_under
from . import subjects
from .messages import EventEnvelope, encode
from .trace_headers import extract_context

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

POSITION_HEADER: Final = "St-Position"
TRACKING_NAME: Final = "relay"


class _Addressed(msgspec.Struct):
    runner_id: str | None = None


_address = msgspec.json.Decoder(_Addressed)


def subject_for(event: RecordedEvent) -> str:
    runner_id = None
    if event.type in subjects.RUNNER_ADDRESSED:
        try:
            runner_id = _address.decode(event.payload).runner_id
        except msgspec.DecodeError:
            runner_id = None
    return subjects.event_subject(event.stream_id, event.type, runner_id)


def headers_for(event: RecordedEvent, previous_id: str | None) -> dict[str, str]:
    headers = {
        Header.MSG_ID.value: event.event_id,
        POSITION_HEADER: str(event.position),
        "St-Type": event.type,
        "St-Stream": event.stream_id,
        **event.metadata.trace,
    }
    if previous_id is not None:
        headers[Header.EXPECTED_LAST_MSG_ID.value] = previous_id
    return headers


class OutboxRelay:
    def __init__(
        self,
        store: EventStore,
        nc: Client,
        *,
        batch_size: int = 256,
        poll_interval: float = 1.0,
        publish_timeout: float = 10.0,
        tracking_interval: float = 5.0,
        window: int = 1024,
    ) -> None:
        self.store = store
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=publish_timeout)
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.publish_timeout = publish_timeout
        self.position = 0
        self._last_msg_id: str | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._nudges: Subscription | None = None
        self.published_total = 0
        self.window = window
        self.tracking_interval = tracking_interval
        self._tracked_at = -tracking_interval
        #: Events offered by this process's handler, by position, still to publish.
        self._offered: dict[int, RecordedEvent] = {}
        #: Store reads (queries) and the events they returned: how often offers fell short.
        self.store_reads = 0
        self.read_from_store = 0
        #: Sent as the body of this relay's own nudges, which it then ignores.
        self.origin = new_id().encode()
        self._announce_waiting = False
        #: Whether the next woken pass reads the store: set by another process's nudge, a
        #: dropped offer, a failed publish and the poll; offers alone need no read.
        self._read_wanted = True
        self._announcing: set[asyncio.Task[None]] = set()
        #: The connection's reconnect count when the stream's tail was last read.
        self._reconnects_seen = 0

    def offer_appended(self, result: AppendResult) -> None:
        """An after-append listener: ``offer`` the events one append stored."""
        self.offer(result.events)

    def offer(self, events: Sequence[RecordedEvent]) -> None:
        """Events just appended in this process, as stored: publish them without a read.

        Bounded: past ``window`` waiting events new offers are dropped, and the relay reads
        those from the store like any other.
        """
        offered = self._offered
        for event in events:
            if event.position <= self.position:
                continue
            if len(offered) < self.window:
                offered[event.position] = event
            else:
                self._read_wanted = True
        self._wake.set()

    def _take_offered(self, after: int) -> list[RecordedEvent]:
        """The offered events that follow ``after`` without a gap (and forget older ones)."""
        offered = self._offered
        if not offered:
            return []
        taken: list[RecordedEvent] = []
        position = after + 1
        while len(taken) < self.batch_size and (event := offered.pop(position, None)):
            taken.append(event)
            position += 1
        if offered and min(offered) < position:
            # Read from the store before their offer came: published already.
            for stale in [p for p in offered if p < position]:
                del offered[stale]
        return taken

    async def reconcile(self) -> int:
        """Resume after the last event JetStream holds (0 when the stream is empty)."""
        self._reconnects_seen = int(self.nc.stats.get("reconnects", 0))
        info = await self.js.stream_info(subjects.EVENTS_STREAM)
        self.position, self._last_msg_id = 0, None
        # The newest sequences may be gone (a server that restarted without its unflushed
        # tail keeps their numbers as deleted): the last message still held counts.
        seq = info.state.last_seq
        while seq and seq >= info.state.first_seq:
            try:
                last = await self.js.get_msg(subjects.EVENTS_STREAM, seq=seq)
            except NotFoundError:
                seq -= 1
                continue
            headers = last.headers or {}
            self.position = int(headers.get(POSITION_HEADER, "0"))
            # The server checks ``Nats-Expected-Last-Msg-Id`` against the id of its newest
            # sequence; past a deleted tail it knows none, so the next publish expects none.
            tail_kept = seq == info.state.last_seq
            self._last_msg_id = headers.get(Header.MSG_ID.value) if tail_kept else None
            break
        return self.position

    async def publish_pending(self, *, read_store: bool = True) -> int:
        """Publish everything stored after ``position``; returns how many were published.

        With ``read_store`` False only offered events are published (the store holds
        nothing else this relay has been told of).

        Reading the store and awaiting acks overlap: up to ``window`` publishes are in
        flight while the next batch is read, so a JetStream fsync per message (sync
        always) costs latency, not throughput.
        """
        before = self.published_total
        inflight: deque[tuple[RecordedEvent, asyncio.Future[PubAck]]] = deque()
        sent_position, previous = self.position, self._last_msg_id
        offered = False
        while True:
            events: list[RecordedEvent] = []
            if len(inflight) < self.window:
                events = self._take_offered(sent_position)
                offered |= bool(events)
                if not events and not offered and read_store:
                    # Only a pass that started without offers reads the store: after
                    # offers, what follows is offered next (and wakes the relay), or was
                    # appended elsewhere and read on the next wake (its nudge, or the poll).
                    events = await self.store.read_all(
                        after_position=sent_position,
                        limit=self.batch_size,
                    )
                    self.store_reads += 1
                    self.read_from_store += len(events)
            for event in events:
                inflight.append((event, await self._publish(event, previous)))
                sent_position, previous = event.position, event.event_id
            if not inflight:
                break
            if events and len(inflight) < self.window:
                continue
            if not await self._settle(inflight, wait=not events):
                for _, future in inflight:
                    if future.done() and not future.cancelled():
                        future.exception()  # retrieved: the tail is read again instead
                    future.cancel()
                self._read_wanted = True
                await self.reconcile()
                break
        published = self.published_total - before
        if published:
            now = time.monotonic()
            if now - self._tracked_at >= self.tracking_interval:
                # Monitoring only (the resume point comes from JetStream), so it is written
                # at most every few seconds instead of costing a commit per batch.
                self._tracked_at = now
                await self.store.set_tracking(TRACKING_NAME, self.position)
        return published

    async def _publish(self, event: RecordedEvent, previous: str | None) -> asyncio.Future[PubAck]:
        if not records_under(event.metadata.trace):
            # The span would not be recorded; its context goes nowhere (the headers carry
            # the event's own), so the publish skips it.
            return await self.js.publish_async(
                subject_for(event),
                encode(EventEnvelope.from_recorded(event)),
                headers=headers_for(event, previous),
            )
        with _tracer.start_as_current_span(
            f"publish {event.type}",
            context=extract_context(event.metadata.trace),
            kind=trace.SpanKind.PRODUCER,
            attributes={"event.position": event.position, "event.id": event.event_id},
        ):
            return await self.js.publish_async(
                subject_for(event),
                encode(EventEnvelope.from_recorded(event)),
                headers=headers_for(event, previous),
            )

    async def _settle(
        self,
        inflight: deque[tuple[RecordedEvent, asyncio.Future[PubAck]]],
        *,
        wait: bool,
    ) -> bool:
        """Take acknowledged publishes off the front, in order (waiting for the first one
        when ``wait``); False when one failed, so the caller re-reads the stream's tail."""
        while inflight:
            event, future = inflight[0]
            if not future.done() and not wait:
                return True
            try:
                # Not wait_for: on Python 3.11 it can swallow a cancellation (stop() hangs).
                async with asyncio.timeout(self.publish_timeout):
                    await future
            except (NatsError, TimeoutError) as exc:
                # A stream without a leader (a cluster node died) answers NoStreamResponse:
                # not an APIError, and just as passing.
                _log.warning("publishing event %s failed: %r; will retry", event.position, exc)
                return False
            inflight.popleft()
            self.position, self._last_msg_id = event.position, event.event_id
            self.published_total += 1
            wait = False
        return True

    async def start(self) -> None:
        await self.reconcile()

        async def on_nudge(msg: Msg) -> None:
            if msg.data != self.origin:  # its own appends came by ``offer``
                self._read_wanted = True
                self._wake.set()

        self._nudges = await self.nc.subscribe(subjects.APPENDED, cb=on_nudge)
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    def wake(self) -> None:
        self._wake.set()

    def announce(self) -> None:
        """Wake the relays of other processes after an append here; appends made before
        a waiting announcement goes out share it (a relay woken reads all it lacks)."""
        if self._announce_waiting or not self.nc.is_connected:
            return
        self._announce_waiting = True
        task = asyncio.create_task(self._publish_announcement())
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def _publish_announcement(self) -> None:
        # Cleared before publishing: an append after this line gets an announcement of its
        # own, one before it is covered by this one.
        self._announce_waiting = False
        #: Whether the next woken pass reads the store: set by another process's nudge, a
        #: dropped offer, a failed publish and the poll; offers alone need no read.
        self._read_wanted = True
        with contextlib.suppress(Exception):
            await self.nc.publish(subjects.APPENDED, self.origin)

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()
            except TimeoutError:
                self._read_wanted = True  # the poll: whatever a lost nudge left behind
            self._wake.clear()
            read_store, self._read_wanted = self._read_wanted, False
            try:
                read_store |= await self._reconciled_after_reconnect()
                await self.publish_pending(read_store=read_store)
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("outbox relay pass failed; retrying")
                self._read_wanted = True
                await asyncio.sleep(self.poll_interval)
                with contextlib.suppress(Exception):
                    await self.reconcile()

    async def _reconciled_after_reconnect(self) -> bool:
        """Read the stream's tail again once the connection came back.

        The server may have restarted without what it had still to flush to disk (it
        fsyncs on an interval, not per message): the tail tells where to resume, and the
        store, which every append fsyncs, fills the gap.
        """
        if int(self.nc.stats.get("reconnects", 0)) == self._reconnects_seen:
            return False
        await self.reconcile()
        return True

    async def stop(self) -> None:
        await unsubscribe_quietly(self._nudges)
        if self._announcing:
            await asyncio.gather(*self._announcing, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.position:
            with contextlib.suppress(Exception):
                await self.store.set_tracking(TRACKING_NAME, self.position)


class RelayNudge:
    """An after-append listener that wakes every relay over NATS (``st.appended``).

    Appends made while one nudge waits to go out share it: a relay woken reads everything
    stored after its position.
    """

    def __init__(self, nc: Client, *, origin: bytes = b"") -> None:
        self.nc = nc
        #: The body of each nudge: the relay beside the handler ignores its own.
        self.origin = origin
        self._waiting = False
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, _result: AppendResult) -> None:
        if self._waiting or not self.nc.is_connected:
            return
        self._waiting = True
        task = asyncio.create_task(self._publish())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self) -> None:
        # Cleared before publishing: an append committed after this line gets a nudge of
        # its own, one committed before it is covered by this one.
        self._waiting = False
        await self.nc.publish(subjects.APPENDED, self.origin)
