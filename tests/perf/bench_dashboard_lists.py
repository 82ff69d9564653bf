"""The dashboard's job-list reads at 100k jobs, over HTTP in process, next to the bare query.

    uv run python tests/perf/bench_dashboard_lists.py [--jobs 100000] [--redis]

Fills a read model (memory; with ``--redis`` also Redis at 127.0.0.1:6379 under a
throwaway prefix) with N submitted jobs, 1% of them labelled ``team=rare`` and half
``team=common``, owned by 100 owners (``user-0`` .. ``user-99``, 1% each) but for one job
in 10,000 owned by ``solo``, then times the requests the jobs table makes (25 a page): the
first page, a page halfway down (by cursor), a status filter, a common label and a rare
one (the bounded scan: at most 5000 jobs read per request), an owner, an owner with a
status, and the rare owner (each one range read of that owner's own index). With Redis it
also prints what the list indexes take, shared and per owner (``MEMORY USAGE``). Each
figure is the median of repeated requests through the Litestar app (httpx's ASGI
transport: no sockets), printed next to the baseline of one bare ``read_model.list_jobs``
page of the same size in the same run, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.projections.read_models.history import History

from swift_trainer.api import ApiDeps, create_app
from swift_trainer.projections.read_models import (
    MemoryReadModel,
    ReadModel,
    RedisReadModel,
)

PAGE = 25
REPEAT = 30
REDIS_URL = "redis://127.0.0.1:6379/0"


class NoCommands:
    """Reads only: a command here would be a bug in the benchmark."""

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the list benchmark sends no commands")


async def fill(read_model: ReadModel, jobs: int) -> None:
    history = History()
    batch = []
    for i in range(jobs):
        labels = {"team": "rare"} if i % 100 == 0 else {"team": "common"} if i % 2 else {}
        owner = "solo" if i % 10_000 == 5 else f"user-{i % 100}"
        batch += history.submit(f"job-{i:06d}", priority=i % 11, labels=labels, owner=owner)
        if len(batch) >= 20_000:
            await read_model.apply_many(batch)
            batch = []
    await read_model.apply_many(batch)


async def median_ms(action: Callable[[], Awaitable[Any]]) -> float:
    await action()
    samples = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


async def measure(name: str, read_model: ReadModel, jobs: int) -> None:
    start = time.perf_counter()
    await fill(read_model, jobs)
    print(f"\n{name}: {jobs} jobs applied in {time.perf_counter() - start:.1f} s")
    app = create_app(ApiDeps(commands=NoCommands(), read_model=read_model))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        deep = await read_model.list_jobs(limit=1000)
        cursor = deep.next_cursor
        for _ in range(jobs // 2 // 1000 - 1):
            if cursor is None:
                break
            cursor = (await read_model.list_jobs(limit=1000, cursor=cursor)).next_cursor

        async def get(query: str) -> None:
            response = await client.get(f"/api/v1/training/jobs?limit={PAGE}&{query}")
            assert response.status_code == 200, response.text

        baseline = await median_ms(lambda: read_model.list_jobs(limit=PAGE))
        print(f"  baseline: bare list_jobs page of {PAGE}: {baseline:8.3f} ms")
        cases = {
            "first page": "",
            "page halfway down": f"cursor={cursor}",
            "status=queued": "status=queued",
            "label team=common": "label=team%3Dcommon",
            "label team=rare (1%)": "label=team%3Drare",
            "owner=user-7 (1%)": "owner=user-7",
            "owner=user-7&status=queued": "owner=user-7&status=queued",
            "owner=solo (0.01%)": "owner=solo",
        }
        for label, query in cases.items():
            figure = await median_ms(lambda query=query: get(query))
            print(f"  {label:26s} {figure:8.3f} ms  ({figure / baseline:6.1f}x baseline)")
    if isinstance(read_model, RedisReadModel):
        await index_memory(read_model)


async def index_memory(read_model: RedisReadModel) -> None:
    """Bytes the list indexes take in Redis: the shared ones and the per-owner copies."""
    client = aioredis.Redis.from_url(REDIS_URL)
    shared = owned = 0
    try:
        async for key in client.scan_iter(match=f"{read_model.prefix}idx:*", count=1000):
            size = int(await client.memory_usage(key) or 0)
            if key.decode().removeprefix(read_model.prefix).startswith("idx:o:"):
                owned += size
            else:
                shared += size
    finally:
        await client.aclose()
    mib = 1024 * 1024
    print(
        f"  list indexes in Redis: shared {shared / mib:.1f} MiB, per owner {owned / mib:.1f} MiB"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--redis", action="store_true", help="also Redis at 127.0.0.1:6379")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    await measure("memory read model", MemoryReadModel(), args.jobs)
    if args.redis:
        prefix = f"bench-dash-{uuid.uuid4().hex[:8]}:"
        redis_model = RedisReadModel.from_url(REDIS_URL, prefix=prefix)
        try:
            await measure("Redis read model", redis_model, args.jobs)
        finally:
            await redis_model.wipe()
            await redis_model.close()


if __name__ == "__main__":
    asyncio.run(main())
