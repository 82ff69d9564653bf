"""GETs on held connections: the same answers as the client, and a killed one is survived."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from swift_trainer.projections.read_models.redis_gets import DirectGets


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_a_get_answers_what_the_client_answers(client: aioredis.Redis) -> None:
    key = f"test-gets-{uuid.uuid4().hex[:8]}"
    gets = DirectGets(client)
    try:
        assert await gets.get(key) is None
        await client.set(key, b"value")
        assert await gets.get(key) == b"value"
        assert await gets.get(key) == b"value", "again, on the held connection"
    finally:
        await gets.close()
        await client.delete(key)


async def test_a_killed_connection_is_replaced_and_the_get_still_answers(
    client: aioredis.Redis,
) -> None:
    key = f"test-gets-{uuid.uuid4().hex[:8]}"
    await client.set(key, b"value")
    gets = DirectGets(client)
    try:
        assert await gets.get(key) == b"value"
        (held,) = gets._idle
        await held.send_command("CLIENT", "ID")
        connection_id = await held.read_response()
        assert await client.client_kill_filter(_id=str(connection_id)) == 1
        assert await gets.get(key) == b"value"
        assert await gets.get(key) == b"value"
    finally:
        await gets.close()
        await client.delete(key)
