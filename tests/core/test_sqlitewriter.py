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
from swift_trainer.core.sqlaudit import verify_chain
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


async def test_appends_by_another_writer_of_the_file_are_seen_by_the_next_append(
    tmp_path: Path,
) -> None:
    """The writer remembers the chain's last link and its streams' versions; a commit by any
    other connection (here a second store on the same file) must make it read them again."""
    first, second = await _open(tmp_path), await _open(tmp_path)
    try:
        await first.append("s-1", [_event()], expected_version=NO_STREAM)
        await second.append("s-1", [_event()], expected_version=1)
        await second.append("s-2", [_event()], expected_version=NO_STREAM)
        # first remembers the chain at position 1 and s-1 at version 1: both are stale now.
        fresh = await first.append("s-3", [_event()], expected_version=NO_STREAM)
        assert fresh.events[0].position == 4
        with pytest.raises(ConcurrencyConflict) as stale:
            await first.append("s-1", [_event()], expected_version=1)
        assert stale.value.actual == 2
        # A stream first created elsewhere: the new-stream append is refused as a conflict.
        with pytest.raises(ConcurrencyConflict) as exists:
            await first.append("s-2", [_event()], expected_version=NO_STREAM)
        assert exists.value.actual == 1
        stored = await first.append("s-1", [_event()], expected_version=2)
        assert stored.events[0].position == 5
        verifier = await verify_chain(first)
        assert verifier.problems == []
        assert verifier.checked == 5
    finally:
        await first.close()
        await second.close()


async def test_a_new_stream_append_to_an_existing_stream_in_a_group_is_a_conflict(
    tmp_path: Path,
) -> None:
    store, other = await _open(tmp_path), await _open(tmp_path)
    try:
        await other.append("taken", [_event()], expected_version=NO_STREAM)
        appends = [
            store.append(f"s-{i}", [_event()], expected_version=NO_STREAM) for i in range(20)
        ]
        appends.insert(10, store.append("taken", [_event()], expected_version=NO_STREAM))
        results = await asyncio.gather(*appends, return_exceptions=True)
        conflict = results[10]
        assert isinstance(conflict, ConcurrencyConflict)
        assert conflict.actual == 1
        assert all(not isinstance(r, BaseException) for i, r in enumerate(results) if i != 10)
        assert (await verify_chain(store)).problems == []
    finally:
        await store.close()
        await other.close()


async def test_a_statement_on_the_writer_connection_makes_it_read_the_head_again(
    tmp_path: Path,
) -> None:
    """Rows changed through the writer's own connection do not change ``data_version``:
    the writer forgets what it remembered after any statement it runs for a caller."""
    store = await _open(tmp_path)
    try:
        writer = store.sqlite_writer
        assert writer is not None
        await store.append("s-1", [_event()], expected_version=NO_STREAM)

        def add_behind_the_store(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO events (position, stream_id, version, event_id, type,"
                " schema_version, payload, metadata, recorded_at)"
                " VALUES (2, 's-1', 2, ?, 'X', 1, x'00', '{}', '2026-01-01 00:00:00.000000')",
                (new_id(),),
            )

        await writer.call(add_behind_the_store)
        fresh = await store.append("s-2", [_event()], expected_version=NO_STREAM)
        assert fresh.events[0].position == 3
        with pytest.raises(ConcurrencyConflict) as stale:
            await store.append("s-1", [_event()], expected_version=1)
        assert stale.value.actual == 2
        stored = await store.append("s-1", [_event()], expected_version=2)
        assert stored.events[0].position == 4
    finally:
        await store.close()
