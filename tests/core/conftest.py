"""Databases for the event store contract suite: a SQLite file or a PostgreSQL schema per test."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from tests.conftest import service_unavailable
from tests.core.eventstore_contract import asyncpg_dsn

POSTGRES_URL = os.environ.get(
    "SWIFT_TRAINER_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


async def _probe_postgres() -> None:
    conn = await asyncpg.connect(asyncpg_dsn(POSTGRES_URL), timeout=3)
    await conn.close()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL; skips (or fails under REQUIRE_SERVICES=1) when it is absent."""
    try:
        asyncio.run(_probe_postgres())
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        service_unavailable(f"PostgreSQL at {POSTGRES_URL}", exc)
    return POSTGRES_URL


@pytest.fixture
async def postgres_schema(postgres_url: str) -> AsyncIterator[str]:
    """A schema name of this test's own; the store's setup() creates it, teardown drops it."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    try:
        yield name
    finally:
        conn = await asyncpg.connect(asyncpg_dsn(postgres_url))
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()
