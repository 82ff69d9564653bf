"""JetStream flushes to disk on an interval: a server that restarts after a power cut may
come back without its newest messages. The event store fsyncs every append, so the relay
refills the stream from it."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

from nats.aio.client import Client
from tests.bus.test_relay import _append_job

from swift_trainer.bus import subjects
from swift_trainer.bus.embedded import EmbeddedNatsServer
from swift_trainer.bus.messages import decode_event_envelope
from swift_trainer.bus.relay import OutboxRelay
from swift_trainer.core.sqlstore import SqlEventStore


def _cut_tail(store_dir: Path, keep: int) -> int:
    """Drop every EVENTS message after the first ``keep``, as a lost unflushed write would."""
    (block,) = (store_dir / "jetstream" / "$G" / "streams" / subjects.EVENTS_STREAM).rglob("*.blk")
    data = block.read_bytes()
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        # A record starts with its length; the top bit marks a record with headers.
        offset += struct.unpack_from("<I", data, offset)[0] & 0x7FFFFFFF
    block.write_bytes(data[: offsets[keep]])
    return len(offsets) - keep


async def _positions(client: Client, expect: int, timeout: float = 30.0) -> list[int]:
    """Every EVENTS message in stream order, once ``expect`` of them are there."""
    js = client.jetstream()
    async with asyncio.timeout(timeout):
        while (await js.stream_info(subjects.EVENTS_STREAM)).state.messages < expect:  # noqa: ASYNC110 - the server has no event for it
            await asyncio.sleep(0.05)
    sub = await js.subscribe(subjects.EVENTS_ALL, ordered_consumer=True)
    positions = []
    for _ in range(expect):
        msg = await sub.next_msg(timeout=5)
        positions.append(decode_event_envelope(msg.data).position)
    await sub.unsubscribe()
    return positions


async def test_a_server_back_without_its_newest_messages_gets_them_again_from_the_store(
    nats_server: EmbeddedNatsServer, nc: Client, store: SqlEventStore
) -> None:
    relay = OutboxRelay(store, nc, poll_interval=0.2)
    await relay.start()
    try:
        await _append_job(store, "a")
        await _append_job(store, "b")
        relay.wake()
        assert await _positions(nc, 6) == [1, 2, 3, 4, 5, 6]

        await nats_server.stop()
        assert _cut_tail(nats_server.store_dir, keep=4) == 2
        await nats_server.start()
        # Nothing new is appended: the relay learns of the restart through the reconnect.
        assert await _positions(nc, 6) == [1, 2, 3, 4, 5, 6]
        await _append_job(store, "c")
        relay.wake()
        assert await _positions(nc, 9) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    finally:
        await relay.stop()
