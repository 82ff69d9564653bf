"""Where the Redis the read-model tests use lives, and what to do when it does not answer."""

from __future__ import annotations

import functools
import os

import pytest
import redis

REDIS_URL = os.environ.get("SWIFT_TRAINER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@functools.cache
def _unreachable() -> str | None:
    """Why the test Redis cannot be used, asked once per run (a refusal retries slowly)."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        return (
            f"Redis at {REDIS_URL} is unreachable ({exc}); start one there or point "
            "SWIFT_TRAINER_TEST_REDIS_URL at one"
        )
    finally:
        client.close()
    return None


@pytest.fixture
def redis_url() -> str:
    """The test Redis, or a skip (a failure under REQUIRE_SERVICES=1) when it is down."""
    reason = _unreachable()
    if reason is not None:
        # Read the way tests/conftest.py reads it, so CI fails here like everywhere else.
        if os.environ.get("REQUIRE_SERVICES", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail(f"{reason}, and REQUIRE_SERVICES=1 requires it")
        pytest.skip(f"{reason}; set REQUIRE_SERVICES=1 to make this a failure")
    return REDIS_URL
