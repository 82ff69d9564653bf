"""Fixtures of the end-to-end tests that run the service as separate processes."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from tests.conftest import service_unavailable

from swift_trainer.bus.embedded import EmbeddedNatsServer

REDIS_URL = os.environ.get("SWIFT_TRAINER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A nats-server of the test's own, as a deployment would run its own."""
    server = EmbeddedNatsServer(tmp_path / "nats")
    loop = asyncio.new_event_loop()
    loop.run_until_complete(server.start())
    try:
        yield server.url
    finally:
        loop.run_until_complete(server.stop())
        loop.close()


def process_env(
    tmp_path: Path, *, nats_url: str, redis_prefix: str, port: int, step_seconds: float
) -> dict[str, str]:
    """The environment of handler, scheduler, runner and api processes sharing one
    nats-server, one SQLite event store and Redis read models under ``redis_prefix``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "REDIS", "EVENT"))}
    env.update(
        NATS_URL=nats_url,
        EVENT_STORE_URL=f"sqlite+aiosqlite:///{tmp_path / 'events.db'}",
        REDIS_URL=REDIS_URL,
        REDIS_PREFIX=redis_prefix,
        SWIFT_TRAINER_DATA_DIR=str(tmp_path / "data"),
        OUTPUT_ROOT=str(tmp_path / "outputs"),
        APP_HOST="127.0.0.1",
        APP_PORT=str(port),
        LOG_LEVEL="WARNING",
        SWIFT_SIM_STEP_SECONDS=str(step_seconds),
    )
    return env


def redis_prefix(name: str) -> str:
    """A throwaway key prefix on the test Redis; skips (or fails in CI) when Redis is absent."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        service_unavailable("Redis", exc)
    return f"test-{name}-{uuid.uuid4().hex[:8]}:"
