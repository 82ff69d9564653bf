"""The log publisher's seq clock stays bounded: idle jobs are forgotten and re-seeded."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from tests.runner.agent_helpers import log_messages

from swift_trainer.runner.log_publisher import LogPublisher


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
