"""The log publisher: batches within the LOGS limits, a seq clock that stays bounded."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
import pytest
from nats.aio.client import Client
from tests.runner.agent_helpers import log_messages

from swift_trainer.bus import subjects
from swift_trainer.bus.messages import LogBatch, LogMessage, decode_log_payload
from swift_trainer.runner.log_publisher import LogPublisher

T = datetime(2026, 1, 1, tzinfo=UTC)


async def test_an_idle_job_is_forgotten_and_continues_above_when_it_logs_again(
    nc: Client,
) -> None:
    publisher = LogPublisher(nc, "r1", flush_interval_s=0.01, idle_forget_s=0.2)
    publisher.start()
    try:
        for job_id in ("idle-a", "idle-b"):
            publisher.publish(job_id, 1, "stdout", "first")
        assert await publisher.flush()
        assert publisher.clock.known("idle-a")
        await asyncio.sleep(0.3)
        publisher.publish("busy", 1, "stdout", "a line after the idle time")
        assert await publisher.flush()
        assert not publisher.clock.known("idle-a")
        assert not publisher.clock.known("idle-b")
        assert publisher.clock.known("busy"), "a job that just logged is kept"
        assert set(publisher._last_line) == {"busy"}

        publisher.publish("idle-a", 2, "stdout", "second")
        assert await publisher.flush()
    finally:
        await publisher.stop()
    seqs = [m.seq for m in await log_messages(nc, "idle-a")]
    assert [m.line for m in await log_messages(nc, "idle-a")] == ["first", "second"]
    assert seqs[1] > seqs[0]


async def raw_messages(nc: Client, job_id: str) -> list[bytes]:
    js = nc.jetstream()
    subject = subjects.log_subject(job_id)
    info = await js.stream_info(subjects.LOGS_STREAM, subjects_filter=subject)
    count = (info.state.subjects or {}).get(subject, 0)
    sub = await js.subscribe(subject, stream=subjects.LOGS_STREAM, ordered_consumer=True)
    try:
        return [(await sub.next_msg(timeout=5.0)).data for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def test_lines_read_together_travel_in_batches_within_the_limits(nc: Client) -> None:
    publisher = LogPublisher(nc, "r1", flush_interval_s=0.01)
    long = '"quoted" \\ ' * 400  # escaping makes it grow in JSON
    sent: list[str] = []
    for n in range(450):  # queued at once: one job's lines share messages
        line = long if n % 100 == 7 else f"line {n}"
        sent.append(line)
        publisher.publish("batched-a", 1, "stdout", line)
        if n % 150 == 0:
            publisher.publish("batched-b", 1, "stderr", f"other {n}")
    publisher.start()
    try:
        assert await publisher.flush()
    finally:
        await publisher.stop()
    assert publisher.published == 453
    raw = await raw_messages(nc, "batched-a")
    assert len(raw) < 50, "batched, not one message per line"
    assert max(len(data) for data in raw) <= 64 * 1024
    assert any(data.startswith(b'{"lines":') for data in raw)
    lines = await log_messages(nc, "batched-a")
    assert [m.line[:20] for m in lines] == [line[:20] for line in sent]
    seqs = [m.seq for m in lines]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [m.line for m in await log_messages(nc, "batched-b")] == [
        "other 0",
        "other 150",
        "other 300",
    ]

    # A new runner process continues above the newest line of the last batch.
    later = LogPublisher(nc, "r2", flush_interval_s=0.01)
    later.start()
    later.publish("batched-a", 2, "stdout", "after a restart")
    assert await later.flush()
    await later.stop()
    after = await log_messages(nc, "batched-a")
    assert after[-1].line == "after a restart"
    assert after[-1].seq > seqs[-1]


def test_either_shape_decodes_and_anything_else_is_refused() -> None:
    line = LogMessage(job_id="j", attempt=1, seq=5, stream="stdout", line="x", at=T, runner_id="r")
    assert decode_log_payload(msgspec.json.encode(line)) == (line,)
    batch = LogBatch(lines=(line, msgspec.structs.replace(line, seq=6)))
    assert [m.seq for m in decode_log_payload(msgspec.json.encode(batch))] == [5, 6]
    for bad in (b"{}", b'{"lines": [{"job_id": 3}]}', b"not json"):
        with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
            decode_log_payload(bad)


async def test_an_empty_batch_as_the_last_message_does_not_stall_the_publisher(
    nc: Client,
) -> None:
    await nc.jetstream().publish(subjects.log_subject("empty-last"), b'{"lines": []}')
    publisher = LogPublisher(nc, "r1", flush_interval_s=0.01)
    publisher.start()
    publisher.publish("empty-last", 1, "stdout", "still published")
    try:
        assert await publisher.flush(timeout=5)
    finally:
        await publisher.stop()
    assert [m.line for m in await log_messages(nc, "empty-last")] == ["still published"]
