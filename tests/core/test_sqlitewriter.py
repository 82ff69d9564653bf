"""SQLite's writer thread: durable settings on its own connection, group commit under
concurrent appenders, and a thread that ends with the store."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from swift_trainer.core.errors import ConcurrencyConflict, StoreError
from swift_trainer.core.ids import new_id
from swift_trainer.core.sqlstore import SqlEventStore, open_event_store
from swift_trainer.core.store import NO_STREAM, NewEvent

WRITER_THREAD = "sqlite-event-store-writer"


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == WRITER_THREAD]


def _event() -> NewEvent:
    return NewEvent(new_id(), "JobSubmitted", b'{"n":1}')


async def _open(tmp_path: Path, **options: object) -> SqlEventStore:
    store = open_event_store(f"sqlite:///{tmp_path / 'events.db'}", **options)  # type: ignore[arg-type]
    await store.setup()
    return store


def _pragma(name: str) -> object:
    def probe(conn: sqlite3.Connection) -> object:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]

    return probe


@pytest.mark.parametrize(("synchronous", "code"), [("FULL", 2), ("NORMAL", 1)])
async def test_the_writer_connection_has_the_store_durability(
    tmp_path: Path, synchronous: str, code: int
) -> None:
    store = await _open(tmp_path, sqlite_synchronous=synchronous, sqlite_busy_timeout=7.0)
    try:
        writer = store.sqlite_writer
        assert writer is not None
        assert await writer.call(_pragma("journal_mode")) == "wal"
        assert await writer.call(_pragma("synchronous")) == code
        assert await writer.call(_pragma("busy_timeout")) == 7000
    finally:
        await store.close()


async def test_concurrent_appends_commit_in_groups_with_their_own_answers(
    tmp_path: Path,
) -> None:
    store = await _open(tmp_path)
    try:
        writer = store.sqlite_writer
        assert writer is not None
        before = writer.transactions
        appends = [
            store.append(f"s-{i}", [_event()], expected_version=NO_STREAM) for i in range(200)
        ]
        # One of them conflicts: stream s-0 is new, so expected version 5 is wrong.
        appends.append(store.append("s-0", [_event()], expected_version=5))
        results = await asyncio.gather(*appends, return_exceptions=True)
        conflicts = [r for r in results if isinstance(r, ConcurrencyConflict)]
        assert len(conflicts) == 1
        stored = [r for r in results if not isinstance(r, BaseException)]
        assert len(stored) == 200
        positions = sorted(r.events[0].position for r in stored)
        assert positions == list(range(1, 201))
        # Queued together, committed together: far fewer transactions than appends.
        assert writer.transactions - before < 100
        assert len(await store.read_all(limit=1000)) == 200
    finally:
        await store.close()


async def test_the_thread_ends_with_the_store_and_later_writes_are_refused(
    tmp_path: Path,
) -> None:
    already = set(_writer_threads())
    store = await _open(tmp_path)
    await store.append("s", [_event()], expected_version=NO_STREAM)
    await store.set_tracking("follower", 1)
    assert set(_writer_threads()) - already
    await store.close()
    assert not set(_writer_threads()) - already
    with pytest.raises(StoreError) as refused:
        await store.append("s", [_event()], expected_version=1)
    assert refused.value.code == "store_closed"


async def test_a_store_opened_but_never_used_starts_no_thread(tmp_path: Path) -> None:
    already = set(_writer_threads())
    store = open_event_store(f"sqlite:///{tmp_path / 'events.db'}")
    assert not set(_writer_threads()) - already
    await store.close()


async def test_an_append_before_setup_is_a_clear_error(tmp_path: Path) -> None:
    store = open_event_store(f"sqlite:///{tmp_path / 'events.db'}")
    try:
        with pytest.raises(StoreError) as refused:
            await store.append("s", [_event()], expected_version=NO_STREAM)
        assert refused.value.code == "store_not_set_up"
    finally:
        await store.close()
