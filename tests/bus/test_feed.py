from __future__ import annotations

import asyncio
from collections.abc import Sequence
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
