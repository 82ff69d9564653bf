"""The log feed reads both shapes of LOGS message into the read model, and skips junk."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client
from tests.projections.conftest import eventually

from swift_trainer.bus import subjects
from swift_trainer.bus.messages import LogBatch, LogMessage
from swift_trainer.projections.log_feed import LogFeed
from swift_trainer.projections.read_models import MemoryReadModel

T = datetime(2026, 1, 1, tzinfo=UTC)


def line(seq: int, text: str) -> LogMessage:
    return LogMessage(
        job_id="feed-job", attempt=1, seq=seq, stream="stdout", line=text, at=T, runner_id="r"
    )


async def test_single_lines_and_batches_reach_the_read_model_in_order(nc: Client) -> None:
    read_model = MemoryReadModel()
    feed = LogFeed(nc, read_model)
    await feed.start()
    js = nc.jetstream()
    subject = subjects.log_subject("feed-job")
    try:
        await js.publish(subject, msgspec.json.encode(line(1, "one")))
        await js.publish(subject, b'{"lines": "not lines"}')
        await js.publish(
            subject, msgspec.json.encode(LogBatch(lines=(line(2, "two"), line(3, "three"))))
        )
        await js.publish(subject, msgspec.json.encode(line(4, "four")))

        async def all_four() -> bool:
            return len(await read_model.logs("feed-job", limit=10)) == 4

        await eventually(all_four, what="four lines in the read model")
        texts = [x.text for x in await read_model.logs("feed-job", limit=10)]
        assert texts == ["one", "two", "three", "four"]
        assert feed.malformed == 1
    finally:
        await feed.stop()
