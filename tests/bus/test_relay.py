from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from swift_trainer.bus import subjects
from swift_trainer.bus.messages import decode_event_envelope
from swift_trainer.bus.relay import TRACKING_NAME, OutboxRelay
from swift_trainer.core import events as e
from swift_trainer.core.ids import job_stream, new_id
from swift_trainer.core.spec import JobSpec
from swift_trainer.core.sqlstore import SqlEventStore
from swift_trainer.core.store import NewEvent

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _new(event: e.Event) -> NewEvent:
    return NewEvent(event_id=new_id(), type=e.event_type(event), payload=e.encode_event(event))


async def _append_job(store: SqlEventStore, job_id: str, runner: str = "r1") -> None:
    spec = JobSpec(data_path="d", model_path="m", output_dir=f"o/{job_id}")
    await store.append(
        job_stream(job_id),
        [
            _new(e.JobSubmitted(at=NOW, job_id=job_id, spec=spec)),
            _new(e.JobQueued(at=NOW, job_id=job_id, priority=5)),
            _new(e.JobScheduled(at=NOW, job_id=job_id, attempt=1, runner_id=runner, gpu_ids=(0,))),
        ],
        expected_version=0,
    )


async def _drain(nc: Client, durable: str, subject: str, expect: int) -> list[int]:
    """Positions a durable consumer receives (acking each), until ``expect`` or a quiet spell."""
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        subject,
        durable=durable,
        stream=subjects.EVENTS_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL),
    )
    positions: list[int] = []
    while len(positions) < expect:
        try:
            msgs = await sub.fetch(100, timeout=1.0)
        except TimeoutError:
            break
        for msg in msgs:
            positions.append(decode_event_envelope(msg.data).position)
            await msg.ack()
    return positions


async def test_every_stored_event_is_published_in_order_with_its_id(
    nc: Client,
    store: SqlEventStore,
) -> None:
    for i in range(5):
        await _append_job(store, f"j{i}", runner=f"r{i % 2}")
    relay = OutboxRelay(store, nc, batch_size=4)
    await relay.reconcile()
    assert await relay.publish_pending() == 15
    assert await store.get_tracking(TRACKING_NAME) == 15
    positions = await _drain(nc, "all", subjects.EVENTS_ALL, 15)
    assert positions == list(range(1, 16))
    js = nc.jetstream()
    first = await js.get_msg(subjects.EVENTS_STREAM, seq=1)
    stored = (await store.read_all(limit=1))[0]
    assert first.headers is not None
    assert first.headers["Nats-Msg-Id"] == stored.event_id
    envelope = decode_event_envelope(first.data or b"")
    assert e.decode_event(envelope.type, bytes(envelope.event)) == e.decode_event(
        stored.type,
        stored.payload,
    )


async def test_subjects_filter_by_job_type_and_runner(nc: Client, store: SqlEventStore) -> None:
    await _append_job(store, "a", runner="gpu-host-1")
    await _append_job(store, "b", runner="gpu-host-2")
    relay = OutboxRelay(store, nc)
    await relay.reconcile()
    await relay.publish_pending()
    assert len(await _drain(nc, "job-a", subjects.job_events_filter("a"), 3)) == 3
    by_type = await _drain(nc, "queued", subjects.event_type_filter("JobQueued"), 2)
    assert len(by_type) == 2
    runner = await _drain(nc, "runner-1", subjects.runner_events_filter("gpu-host-1"), 1)
    assert runner == [3], "only the start addressed to gpu-host-1"


async def test_a_relay_killed_between_commit_and_publish_delivers_exactly_once(
    nc: Client,
    store: SqlEventStore,
) -> None:
    await _append_job(store, "a")
    first = OutboxRelay(store, nc)
    await first.reconcile()
    await first.publish_pending()
    consumer = await _drain(nc, "durable", subjects.EVENTS_ALL, 3)
    assert consumer == [1, 2, 3]

    # Events committed while no relay runs (the process died right after the SQL commit) ...
    await _append_job(store, "b")
    # ... and a crash after publishing but before bookkeeping: the tracking row lags behind.
    await store.set_tracking(TRACKING_NAME, 1)

    restarted = OutboxRelay(store, nc)
    assert await restarted.reconcile() == 3, "resume from what JetStream really holds"
    assert await restarted.publish_pending() == 3
    assert await _drain(nc, "durable", subjects.EVENTS_ALL, 3) == [4, 5, 6]
    info = await nc.jetstream().stream_info(subjects.EVENTS_STREAM)
    assert info.state.messages == 6


async def test_a_running_relay_publishes_on_its_own_after_a_nudge(
    nc: Client,
    store: SqlEventStore,
) -> None:
    relay = OutboxRelay(store, nc, poll_interval=30)
    await relay.start()
    try:
        await _append_job(store, "a")
        await nc.publish(subjects.APPENDED, b"")
        for _ in range(100):
            if relay.position == 3:
                break
            await asyncio.sleep(0.02)
        assert relay.position == 3
    finally:
        await relay.stop()


async def test_offered_events_are_published_without_a_read_and_gaps_come_from_the_store(
    nc: Client,
    store: SqlEventStore,
) -> None:
    """What this process's handler appended is handed over; what another process appended
    (not offered) is read from the store; an offer of what was published already is dropped."""
    relay = OutboxRelay(store, nc)
    await relay.reconcile()
    spec = JobSpec(data_path="d", model_path="m", output_dir="o/a")
    mine = await store.append(
        job_stream("a"), [_new(e.JobSubmitted(at=NOW, job_id="a", spec=spec))], expected_version=0
    )
    relay.offer(mine.events)
    assert await relay.publish_pending() == 1
    assert relay.store_reads == 0, "offered events are not read back"
    await _append_job(store, "elsewhere")  # positions 2-4, never offered
    later = await store.append(
        job_stream("a"), [_new(e.JobQueued(at=NOW, job_id="a", priority=5))], expected_version=1
    )
    relay.offer(later.events)  # position 5 waits behind the gap
    relay.offer(mine.events)  # published already: ignored
    assert await relay.publish_pending() == 4
    assert relay.read_from_store == 4  # 2-4 and 5 came in one read of the store
    assert await _drain(nc, "all", subjects.EVENTS_ALL, 5) == [1, 2, 3, 4, 5]
    assert await relay.publish_pending() == 0, "the offer of 5 was not published twice"
    info = await nc.jetstream().stream_info(subjects.EVENTS_STREAM)
    assert info.state.messages == 5


async def test_a_running_relay_reads_the_store_for_others_appends_not_for_its_own(
    nc: Client,
    store: SqlEventStore,
) -> None:
    """Offers and the relay's own announcement cost no store read; another process's
    announcement (or nudge) does, and brings what that process appended."""
    relay = OutboxRelay(store, nc, poll_interval=30)
    await relay.start()
    heard: list[bytes] = []

    async def listen(msg: Msg) -> None:
        heard.append(msg.data)

    listener = await nc.subscribe(subjects.APPENDED, cb=listen)
    try:
        reads = relay.store_reads
        spec = JobSpec(data_path="d", model_path="m", output_dir="o/a")
        mine = await store.append(
            job_stream("a"),
            [_new(e.JobSubmitted(at=NOW, job_id="a", spec=spec))],
            expected_version=0,
        )
        relay.offer(mine.events)
        relay.announce()
        await _until(lambda: relay.position == 1 and heard == [relay.origin])
        await nc.flush()
        await asyncio.sleep(0.1)  # room for a wrongly woken pass to read
        assert relay.store_reads == reads, "its own append needed no read"
        await _append_job(store, "elsewhere")  # positions 2-4, never offered
        await nc.publish(subjects.APPENDED, b"another-relay")
        await _until(lambda: relay.position == 4)
        assert relay.store_reads > reads
    finally:
        await listener.unsubscribe()
        await relay.stop()


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(250):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition did not hold within 5 s")
