"""The event store contract on PostgreSQL (a schema per test), plus what only it has."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from tests.core.eventstore_contract import EventStoreContract, asyncpg_dsn, event, events

from swift_trainer.core.errors import StoreError
from swift_trainer.core.sqlstore import SqlEventStore, open_event_store
from swift_trainer.core.store import NO_STREAM

pytestmark = pytest.mark.postgres


class TestPostgresEventStore(EventStoreContract):
    @pytest.fixture(autouse=True)
    def _database(self, postgres_url: str, postgres_schema: str) -> None:
        self.url = postgres_url
        self.schema = postgres_schema

    def open_store(self) -> SqlEventStore:
        return open_event_store(self.url, schema_name=self.schema)


@pytest.fixture
async def store(postgres_url: str, postgres_schema: str) -> AsyncIterator[SqlEventStore]:
    opened = open_event_store(postgres_url, schema_name=postgres_schema)
    await opened.setup()
    try:
        yield opened
    finally:
        await opened.close()


async def test_slow_writer_holds_back_later_positions(
    store: SqlEventStore, postgres_url: str, postgres_schema: str
) -> None:
    """A transaction that has appended but not committed blocks the next appender.

    If it did not, the next appender could take a higher position and commit first, and a
    reader that saw it would never go back for the slow one's lower position.
    """
    slow = await asyncpg.connect(
        asyncpg_dsn(postgres_url), server_settings={"search_path": postgres_schema}
    )
    try:
        transaction = slow.transaction()
        await transaction.start()
        await slow.fetch(
            "SELECT * FROM append_events($1, NULL, NULL, $2, $3, $4, $5, $6)",
            "slow",
            ["slow-1"],
            ["Tested"],
            [1],
            [b"{}"],
            ["{}"],
        )
        fast = asyncio.create_task(store.append("fast", [event("fast-1")], expected_version=None))
        await asyncio.sleep(0.3)
        assert not fast.done()
        assert await store.read_all() == []  # readers are not blocked, and see nothing yet
        await transaction.commit()
        await asyncio.wait_for(fast, timeout=5)
    finally:
        await slow.close()
    stored = await store.read_all()
    assert [e.event_id for e in stored] == ["slow-1", "fast-1"]
    assert stored[0].position < stored[1].position


async def test_schemas_keep_stores_apart(
    store: SqlEventStore, postgres_url: str, postgres_schema: str
) -> None:
    await store.append("a", events(2), expected_version=NO_STREAM)
    other_schema = f"{postgres_schema}_other"
    other = open_event_store(postgres_url, schema_name=other_schema)
    try:
        await other.setup()
        assert await other.read_all() == []
        await other.append("a", events(1), expected_version=NO_STREAM)
        assert await store.stream_version("a") == 2
    finally:
        async with other.engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA "{other_schema}" CASCADE')
        await other.close()


async def test_unreachable_server_is_a_store_error() -> None:
    store = open_event_store("postgresql://postgres@127.0.0.1:1/test")
    try:
        with pytest.raises(StoreError) as caught:
            await store.setup()
        assert caught.value.code == "store_unavailable"
    finally:
        await store.close()


def test_invalid_schema_name_is_refused() -> None:
    with pytest.raises(StoreError) as caught:
        open_event_store("postgresql://u@localhost/db", schema_name='x"; DROP TABLE events; --')
    assert caught.value.code == "store_url_invalid"
