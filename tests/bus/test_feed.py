from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from nats.aio.client import Client

from swift_trainer.bus import subjects
from swift_trainer.bus.feed import EventFeed
from swift_trainer.bus.relay import OutboxRelay
from swift_trainer.core import events as e
from swift_trainer.core.ids import new_id
from swift_trainer.core.sqlstore import SqlEventStore
from swift_trainer.core.store import NewEvent, RecordedEvent

NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def _append(store: SqlEventStore, n: int) -> None:
    for _ in range(n):
        event = e.QueueProcessorPaused(at=NOW, reason="x")
        await store.append(
            "queue-processor",
            [
                NewEvent(
                    event_id=new_id(), type="QueueProcessorPaused", payload=e.encode_event(event)
                )
            ],
            expected_version=None,
        )


async def test_a_feed_replays_history_then_follows_live_events_in_order(
    nc: Client,
    store: SqlEventStore,
) -> None:
    relay = OutboxRelay(store, nc)
    await relay.reconcile()
    await _append(store, 30)
    await relay.publish_pending()

    seen: list[int] = []

    async def handle(batch: Sequence[RecordedEvent]) -> None:
        seen.extend(event.position for event in batch)

    feed = EventFeed(nc, handle, after_position=10)
    await feed.start()
    try:
        await feed.wait_caught_up(10)
        assert seen == list(range(11, 31)), "skips what was applied, nothing twice"
        await _append(store, 5)
        await relay.publish_pending()
        for _ in range(100):
            if len(seen) == 25:
                break
            await asyncio.sleep(0.02)
        assert seen == list(range(11, 36))
    finally:
        await feed.stop()


async def test_an_undecodable_message_is_skipped_and_counted(
    nc: Client,
    store: SqlEventStore,
) -> None:
    js = nc.jetstream()
    await js.publish(f"{subjects.EVENTS_ROOT}.system._.x.Garbage", b"garbage")
    relay = OutboxRelay(store, nc)
    await relay.reconcile()
    await _append(store, 2)
    await relay.publish_pending()
    seen: list[int] = []

    async def handle(batch: Sequence[RecordedEvent]) -> None:
        seen.extend(event.position for event in batch)

    feed = EventFeed(nc, handle)
    await feed.start()
    try:
        await feed.wait_caught_up(10)
        assert seen == [1, 2]
        assert feed.malformed == 1
    finally:
        await feed.stop()


async def test_a_failing_projection_is_retried_not_skipped(
    nc: Client, store: SqlEventStore
) -> None:
    relay = OutboxRelay(store, nc)
    await relay.reconcile()
    await _append(store, 3)
    await relay.publish_pending()
    calls = 0
    seen: list[int] = []

    async def flaky(batch: Sequence[RecordedEvent]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("redis went away")
        seen.extend(event.position for event in batch)

    feed = EventFeed(nc, flaky)
    await feed.start()
    try:
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.02)
        assert seen == [1, 2, 3]
    finally:
        await feed.stop()


async def _consumers(nc: Client) -> int:
    return (await nc.jetstream().stream_info(subjects.EVENTS_STREAM)).state.consumer_count


async def _eventually(condition: Callable[[], bool], what: str) -> None:
    for _ in range(250):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}")


async def test_feeds_of_one_connection_share_one_consumer_and_each_gets_every_event(
    nc: Client, store: SqlEventStore
) -> None:
    relay = OutboxRelay(store, nc)
    await relay.reconcile()
    await _append(store, 5)
    await relay.publish_pending()
    before = await _consumers(nc)
    first: list[int] = []
    late: list[int] = []

    async def into(seen: list[int], batch: Sequence[RecordedEvent]) -> None:
        seen.extend(event.position for event in batch)

    one = EventFeed(nc, lambda batch: into(first, batch), after_position=2)
    await one.start()
    try:
        await one.wait_caught_up(10)
        assert first == [3, 4, 5]
        # Joins at an older position: the tap hands it the recent events it lacks.
        two = EventFeed(nc, lambda batch: into(late, batch), after_position=3)
        await two.start()
        try:
            await two.wait_caught_up(10)
            assert late == [4, 5]
            assert await _consumers(nc) == before + 1, "one consumer for both feeds"
            await _append(store, 3)
            await relay.publish_pending()
            await _eventually(lambda: len(first) == 6 and len(late) == 5, "both saw 6-8")
            assert first == [3, 4, 5, 6, 7, 8]
            assert late == [4, 5, 6, 7, 8]
        finally:
            await two.stop()
        await _append(store, 1)
        await relay.publish_pending()
        await _eventually(lambda: first[-1] == 9, "the first feed goes on alone")
    finally:
        await one.stop()
    await _eventually_consumers(nc, before)


async def _eventually_consumers(nc: Client, count: int) -> None:
    # The server drops an ordered consumer a few seconds after its last subscriber leaves.
    for _ in range(1500):
        if await _consumers(nc) == count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"consumers never went back to {count}")


async def test_a_feed_needing_events_the_tap_no_longer_holds_gets_its_own_consumer(
    nc: Client, store: SqlEventStore
) -> None:
    relay = OutboxRelay(store, nc)
    await relay.reconcile()
    await _append(store, 4)
    await relay.publish_pending()
    before = await _consumers(nc)
    ahead: list[int] = []
    behind: list[int] = []

    async def into(seen: list[int], batch: Sequence[RecordedEvent]) -> None:
        seen.extend(event.position for event in batch)

    one = EventFeed(nc, lambda batch: into(ahead, batch), after_position=3)
    await one.start()
    try:
        await one.wait_caught_up(10)
        # The tap started after position 3: events 1-3 never went through it.
        two = EventFeed(nc, lambda batch: into(behind, batch), after_position=0)
        await two.start()
        try:
            await two.wait_caught_up(10)
            assert behind == [1, 2, 3, 4]
            assert await _consumers(nc) == before + 2
        finally:
            await two.stop()
        assert ahead == [4]
    finally:
        await one.stop()


async def test_feeds_starting_at_the_head_of_a_long_stream_share_one_consumer(
    nc: Client, store: SqlEventStore
) -> None:
    """A process that restarts: every projection starts where the stream ends."""
    relay = OutboxRelay(store, nc)
    await relay.reconcile()
    await _append(store, 6)
    await relay.publish_pending()
    before = await _consumers(nc)
    seen: list[list[int]] = [[], []]

    async def into(index: int, batch: Sequence[RecordedEvent]) -> None:
        seen[index].extend(event.position for event in batch)

    feeds = [EventFeed(nc, lambda batch, i=i: into(i, batch), after_position=6) for i in (0, 1)]
    for feed in feeds:
        await feed.start()
    try:
        for feed in feeds:
            await feed.wait_caught_up(10)
        assert await _consumers(nc) == before + 1
        await _append(store, 2)
        await relay.publish_pending()
        await _eventually(lambda: seen == [[7, 8], [7, 8]], "both saw 7 and 8")
    finally:
        for feed in feeds:
            await feed.stop()
