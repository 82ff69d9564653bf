"""The event store contract on SQLite (a file per test), plus what only SQLite has."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.core.eventstore_contract import EventStoreContract, events, read_everything

from swift_trainer.core.errors import StoreError
from swift_trainer.core.sqlstore import SqlEventStore, open_event_store
from swift_trainer.core.store import NO_STREAM


class TestSqliteEventStore(EventStoreContract):
    @pytest.fixture(autouse=True)
    def _database(self, tmp_path: Path) -> None:
        self.url = f"sqlite+aiosqlite:///{tmp_path / 'events.db'}"

    def open_store(self) -> SqlEventStore:
        return open_event_store(self.url)


async def _pragma(store: SqlEventStore, name: str) -> object:
    async with store.engine.connect() as conn:
        return (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()


async def test_durable_wal_with_busy_timeout(tmp_path: Path) -> None:
    store = open_event_store(f"sqlite:///{tmp_path / 'events.db'}", sqlite_busy_timeout=12.5)
    try:
        await store.setup()
        assert store.dialect == "sqlite"
        assert await _pragma(store, "journal_mode") == "wal"
        assert await _pragma(store, "synchronous") == 2  # FULL: fsync at every commit
        assert await _pragma(store, "busy_timeout") == 12500
    finally:
        await store.close()


async def test_synchronous_can_be_relaxed(tmp_path: Path) -> None:
    store = open_event_store(f"sqlite:///{tmp_path / 'e.db'}", sqlite_synchronous="NORMAL")
    try:
        assert await _pragma(store, "synchronous") == 1
    finally:
        await store.close()


@pytest.mark.parametrize(
    "url",
    ["sqlite+aiosqlite:///:memory:", "sqlite://", "mysql://localhost/db", "not a url"],
)
def test_unusable_urls_are_refused(url: str) -> None:
    with pytest.raises(StoreError) as caught:
        open_event_store(url)
    assert caught.value.code == "store_url_invalid"


_APPENDER = textwrap.dedent(
    """
    import asyncio, sys
    from swift_trainer.core.errors import ConcurrencyConflict
    from swift_trainer.core.sqlstore import open_event_store
    from swift_trainer.core.store import NewEvent

    async def main(url, name, count):
        store = open_event_store(url)
        await store.setup()
        try:
            for i in range(count):
                while True:
                    version = await store.stream_version("shared")
                    event = NewEvent(f"{name}-{i}", "Tested", b"{}")
                    try:
                        await store.append("shared", [event], expected_version=version)
                        break
                    except ConcurrencyConflict:
                        pass
        finally:
            await store.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


async def test_processes_share_one_file(tmp_path: Path) -> None:
    """Separate processes (own connections, own in-process queues) append to one stream."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'events.db'}"
    count = 25
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _APPENDER, url, name, str(count), stderr=subprocess.PIPE
        )
        for name in ("p1", "p2", "p3")
    ]
    for proc in procs:
        _, stderr = await proc.communicate()
        assert proc.returncode == 0, stderr.decode()
    store = open_event_store(url)
    try:
        stored = await read_everything(store)
        assert [e.version for e in stored] == list(range(1, 3 * count + 1))
        assert len({e.event_id for e in stored}) == 3 * count
        result = await store.append("other", events(1), expected_version=NO_STREAM)
        assert result.events[0].position == 3 * count + 1
    finally:
        await store.close()
