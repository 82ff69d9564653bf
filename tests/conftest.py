"""Fixtures shared by every test folder: services that may be absent on a fresh machine, and
a real bus (each test its own nats-server on a free port with a temp JetStream dir, and its
own SQLite event store)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from swift_trainer.bus.connection import connect, provision
from swift_trainer.bus.embedded import EmbeddedNatsServer
from swift_trainer.core.sqlstore import SqlEventStore, open_event_store


def require_services() -> bool:
    """In CI (REQUIRE_SERVICES=1) an absent service fails the run instead of skipping."""
    return os.environ.get("REQUIRE_SERVICES", "").strip().lower() in {"1", "true", "yes"}


def service_unavailable(what: str, error: BaseException) -> None:
    missing(f"{what} is not reachable ({error!r})")


def missing(message: str, *, module_level: bool = False) -> None:
    """Skip for a missing service or tool, or fail when REQUIRE_SERVICES=1."""
    if require_services():
        pytest.fail(f"{message}, and REQUIRE_SERVICES=1 requires it")
    pytest.skip(
        f"{message}; set REQUIRE_SERVICES=1 to make this a failure",
        allow_module_level=module_level,
    )


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNatsServer]:
    server = EmbeddedNatsServer(tmp_path / "nats")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def nc(nats_server: EmbeddedNatsServer) -> AsyncIterator[Client]:
    client = await connect(nats_server.url, name="test")
    await provision(client.jetstream())
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlEventStore]:
    event_store = open_event_store(f"sqlite+aiosqlite:///{tmp_path / 'events.db'}")
    await event_store.setup()
    try:
        yield event_store
    finally:
        await event_store.close()
