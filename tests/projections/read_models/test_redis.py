"""The read-model contract against Redis, plus what only the Redis backend has to prove.

Each read model gets a random key prefix and is wiped afterwards, so tests share one
Redis without seeing each other (and without FLUSHDB).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from swift_trainer.projections.read_models import (
    JobSummary,
    Limits,
    MemoryReadModel,
    ReadModel,
    ReadModelConflict,
    RedisReadModel,
    catch_up,
)

from .contract import ReadModelContract
from .history import History, ListEventStore, random_history


def _prefix() -> str:
    return f"test-rm-{uuid.uuid4().hex[:12]}:"


class TestRedisReadModel(ReadModelContract):
    @pytest.fixture(autouse=True)
    def _use_redis(self, redis_url: str) -> None:
        self.url = redis_url

    async def create_read_model(self, limits: Limits | None = None) -> ReadModel:
        return RedisReadModel.from_url(self.url, prefix=_prefix(), limits=limits)

    async def reopen(self, read_model: ReadModel) -> ReadModel:
        assert isinstance(read_model, RedisReadModel)
        return RedisReadModel.from_url(self.url, prefix=read_model.prefix)

    async def dispose(self, read_model: ReadModel) -> None:
        try:
            await read_model.wipe()
        finally:
            await read_model.close()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def redis_model(client: aioredis.Redis) -> AsyncIterator[RedisReadModel]:
    model = RedisReadModel(client, prefix=_prefix())
    yield model
    await model.wipe()
    await model.close()


async def test_status_read_is_one_get_of_a_json_blob(
    redis_model: RedisReadModel, client: aioredis.Redis
) -> None:
    h = History()
    await redis_model.apply_many(h.running("a", priority=7))
    raw = await client.get(f"{redis_model.prefix}job:a")
    assert isinstance(raw, bytes)
    summary = msgspec.json.decode(raw, type=JobSummary)
    assert summary.status == "running"
    p = redis_model.prefix
    assert await client.type(f"{p}idx:sp:running:7") == b"zset"
    assert await client.zscore(f"{p}idx:all", "a") == h.records[0].position
    assert await client.get(f"{p}applied") == str(h.records[-1].position).encode()


async def test_a_warm_batch_is_one_round_trip(
    redis_model: RedisReadModel, client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = History()
    await redis_model.apply_many(h.running("a"))  # loads the scripts and the fold
    batch = []
    for step in range(1, 1201):  # more values than one scripted command carries
        batch += h.progress("a", step, loss=1.0 / step)
    sent: list[object] = []
    original: Callable[..., Awaitable[Any]] = client.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        sent.append(args[0])
        return await original(*args, **options)

    monkeypatch.setattr(client, "execute_command", counting)
    assert await redis_model.apply_many(batch) == 1200
    assert sent == ["EVALSHA"]
    monkeypatch.undo()
    assert len(await redis_model.metric_history("a")) == 1200
    assert len(await redis_model.job_events("a", limit=1000)) == 1000


async def test_two_projectors_on_one_prefix_apply_each_event_once(redis_url: str) -> None:
    prefix = _prefix()
    first = RedisReadModel.from_url(redis_url, prefix=prefix)
    second = RedisReadModel.from_url(redis_url, prefix=prefix)
    reference = MemoryReadModel()
    try:
        records = random_history(5).records
        await first.apply_many(records[:10])
        await second.apply_many(records[:20])  # overlaps what the first applied
        # The first still believes it is at 10: its commit is refused, it reloads and
        # applies only what the second has not.
        assert await first.apply_many(records[10:30]) == 10
        assert await second.apply_many(records) == len(records) - 30
        await reference.apply_many(records)
        assert await first.snapshot() == await reference.snapshot()
    finally:
        await first.wipe()
        await first.close()
        await second.close()


@pytest.mark.parametrize("seed", [21, 22])
async def test_memory_and_redis_reach_the_same_state(
    redis_model: RedisReadModel, seed: int
) -> None:
    records = random_history(seed, jobs=6, steps=200).records
    memory = MemoryReadModel()
    await memory.apply_many(records)
    for start in range(0, len(records), 13):
        await redis_model.apply_many(records[start : start + 13])
    assert await redis_model.snapshot() == await memory.snapshot()


async def test_wipe_stays_inside_its_prefix(client: aioredis.Redis) -> None:
    tricky = RedisReadModel(client, prefix=f"test-rm-[{uuid.uuid4().hex[:6]}]*:")
    neighbour = RedisReadModel(client, prefix=_prefix())
    try:
        h = History()
        await tricky.apply_many(h.submit("a"))
        await neighbour.apply_many(h.records)
        await tricky.wipe()
        assert await tricky.get_job("a") is None
        assert await neighbour.get_job("a") is not None
        assert await client.exists(f"{tricky.prefix}applied") == 0
    finally:
        await neighbour.wipe()
        await tricky.wipe()


async def test_a_wipe_elsewhere_stops_the_projector_instead_of_leaving_a_hole(
    redis_url: str,
) -> None:
    prefix = _prefix()
    projector = RedisReadModel.from_url(redis_url, prefix=prefix)
    operator = RedisReadModel.from_url(redis_url, prefix=prefix)
    try:
        records = random_history(6).records
        await projector.apply_many(records[:20])
        await operator.wipe()
        with pytest.raises(ReadModelConflict, match="catch up"):
            await projector.apply_many(records[20:30])
        # Catching up from the store (what the projector's service does) heals it.
        assert await catch_up(ListEventStore(records), projector) == len(records)
        reference = MemoryReadModel()
        await reference.apply_many(records)
        assert await projector.snapshot() == await reference.snapshot()
    finally:
        await projector.wipe()
        await projector.close()
        await operator.close()
