"""The fleet benchmark, shrunk to a smoke test: the distributed shape drains a small queue."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
import redis
from tests.conftest import service_unavailable

BENCH = Path(__file__).with_name("bench_fleet.py")


async def _postgres_answers(url: str) -> None:
    await (await asyncpg.connect(url, timeout=3)).close()


def test_a_small_fleet_drains_its_queue() -> None:
    try:
        redis.Redis.from_url(
            os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
            socket_connect_timeout=2,
        ).ping()
    except redis.RedisError as exc:
        service_unavailable("Redis", exc)
    postgres = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        asyncio.run(_postgres_answers(postgres))
    except (OSError, asyncpg.PostgresError) as exc:
        service_unavailable("PostgreSQL", exc)
    arguments = ["--hosts", "5", "--jobs", "50", "--host-processes", "1", "--steps", "2"]
    arguments += ["--step-seconds", "0.1", "--timeout", "150"]
    done = subprocess.run(
        [sys.executable, str(BENCH), *arguments],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "queue drain:" in done.stdout, done.stdout


pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(300)]
