"""Key-value buckets provisioned by processes that start together."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client

from swift_trainer.bus.connection import ensure_bucket


async def test_processes_racing_to_create_a_bucket_all_start(nc: Client) -> None:
    """Each asks for its own TTL; the first create wins and the others use that bucket."""
    js = nc.jetstream()
    for attempt in range(5):
        bucket = f"race-{attempt}"
        await asyncio.gather(*(ensure_bucket(js, bucket, ttl) for ttl in (3.0, 6.0, 9.0, 12.0)))
        status = await (await js.key_value(bucket)).status()
        assert status.ttl in (3.0, 6.0, 9.0, 12.0)
        await js.delete_key_value(bucket)
