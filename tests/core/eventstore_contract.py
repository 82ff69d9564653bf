"""The event store contract: one suite, run against every backend.

Subclasses (``test_eventstore_sqlite.py``, ``test_eventstore_postgres.py``) only say how to
open a store on a database of the test's own; every behaviour is asserted here, so the
backends cannot drift apart. Concurrency tests open several stores (several engines and
pools) on the same database, which is what several processes do.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from swift_trainer.core import _sqlschema
from swift_trainer.core.errors import (
    ConcurrencyConflict,
    IntegrityError,
    SchemaVersionError,
    StoreError,
)
from swift_trainer.core.ids import new_id
from swift_trainer.core.sqlstore import SqlEventStore
from swift_trainer.core.store import (
    NO_STREAM,
    AppendResult,
    CommandStore,
    EventMetadata,
    EventStore,
    NewEvent,
    RecordedEvent,
)


def asyncpg_dsn(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL in the form asyncpg itself accepts."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def event(event_id: str | None = None, *, type: str = "Tested", payload: bytes = b"{}") -> NewEvent:
    return NewEvent(event_id=event_id or new_id(), type=type, payload=payload)


def events(count: int) -> list[NewEvent]:
    return [event() for _ in range(count)]


async def append_retrying(store: SqlEventStore, stream_id: str, new: Sequence[NewEvent]) -> int:
    """Append at the version just read, re-reading on conflict; returns the conflicts seen."""
    conflicts = 0
    while True:
        version = await store.stream_version(stream_id)
        try:
            await store.append(stream_id, new, expected_version=version)
        except ConcurrencyConflict:
            conflicts += 1
        else:
            return conflicts


async def read_everything(store: SqlEventStore) -> list[RecordedEvent]:
    found: list[RecordedEvent] = []
    while batch := await store.read_all(after_position=found[-1].position if found else 0):
        found.extend(batch)
    return found


class EventStoreContract(ABC):
    """What every EventStore backend must do. Subclasses provide :meth:`open_store`."""

    @abstractmethod
    def open_store(self) -> SqlEventStore:
        """A new store (own engine and pool) on this test's database, not yet set up."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[SqlEventStore]:
        opened = self.open_store()
        await opened.setup()
        try:
            yield opened
        finally:
            await opened.close()

    @asynccontextmanager
    async def more_stores(self, count: int) -> AsyncIterator[list[SqlEventStore]]:
        """Extra stores on the same (already set up) database, closed afterwards."""
        stores = [self.open_store() for _ in range(count)]
        try:
            yield stores
        finally:
            for opened in stores:
                await opened.close()

    # --- basics -----------------------------------------------------------------------------

    async def test_satisfies_the_protocols(self, store: SqlEventStore) -> None:
        assert isinstance(store, EventStore)
        assert isinstance(store, CommandStore)

    async def test_empty_store(self, store: SqlEventStore) -> None:
        assert await store.last_position() == 0
        assert await store.read_all() == []
        assert await store.read_stream("job-1") == []
        assert await store.stream_version("job-1") == 0
        assert await store.get_tracking("relay") == 0
        assert await store.find_command("cmd-1") is None

    async def test_a_noop_is_recorded_once_and_keeps_its_answer(self, store: SqlEventStore) -> None:
        record = await store.record_noop("cmd-noop", "job-1")
        assert (record.command_id, record.events, record.error_code) == ("cmd-noop", (), None)
        # An id already answered keeps its first answer, whichever kind it was.
        await store.record_rejection("cmd-refused", "job-1", "invalid_transition", "no")
        refused = await store.record_noop("cmd-refused", "job-1")
        assert refused.error_code == "invalid_transition"
        assert (await store.record_rejection("cmd-noop", "job-1", "x", "y")).error_code is None
        # An append under a recorded no-op stores nothing.
        result = await store.append(
            "job-1", [NewEvent(new_id(), "T", b"{}")], expected_version=0, command_id="cmd-noop"
        )
        assert result.duplicate
        assert result.events == ()
        assert await store.stream_version("job-1") == 0

    async def test_snapshots_keep_the_newest(self, store: SqlEventStore) -> None:
        assert await store.load_snapshot("gpu-ledger") is None
        await store.save_snapshot("gpu-ledger", 5, b"five")
        await store.save_snapshot("gpu-ledger", 3, b"three")  # a slower writer: ignored
        snapshot = await store.load_snapshot("gpu-ledger")
        assert snapshot is not None
        assert (snapshot.version, snapshot.payload) == (5, b"five")
        await store.save_snapshot("gpu-ledger", 9, bytes(range(256)))
        snapshot = await store.load_snapshot("gpu-ledger")
        assert snapshot is not None
        assert (snapshot.version, snapshot.payload) == (9, bytes(range(256)))
        assert await store.load_snapshot("job-1") is None
        with pytest.raises(IntegrityError):
            await store.save_snapshot("gpu-ledger", 0, b"")

    async def test_round_trip_keeps_every_field(self, store: SqlEventStore) -> None:
        metadata = EventMetadata(
            command_id="cmd-1",
            correlation_id="corr-1",
            causation_id="cause-1",
            trace={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
            actor="alice",
        )
        sent = [
            NewEvent("e-1", "JobSubmitted", b'{"gpus": 2}', schema_version=3, metadata=metadata),
            NewEvent("e-2", "JobQueued", bytes(range(256)), metadata=EventMetadata()),
        ]
        before = datetime.now(UTC)
        result = await store.append("job-1", sent, expected_version=NO_STREAM)
        after = datetime.now(UTC)

        assert not result.duplicate
        assert result.stream_id == "job-1"
        assert result.version == 2
        assert [e.event_id for e in result.events] == ["e-1", "e-2"]
        first, second = result.events
        assert (first.type, first.payload, first.schema_version) == (
            "JobSubmitted",
            b'{"gpus": 2}',
            3,
        )
        assert first.metadata == metadata
        assert second.payload == bytes(range(256))
        assert second.metadata == EventMetadata()
        for recorded in result.events:
            assert recorded.recorded_at.tzinfo is not None
            assert recorded.recorded_at.utcoffset() == timedelta(0)
            # The database clock may lag or lead ours a little; a naive or local-time value
            # would raise on this comparison or be hours off.
            slack = timedelta(seconds=5)
            assert before - slack <= recorded.recorded_at <= after + slack
        assert await store.read_stream("job-1") == list(result.events)
        assert await store.read_all() == list(result.events)

    async def test_versions_and_positions(self, store: SqlEventStore) -> None:
        a1 = await store.append("a", events(3), expected_version=NO_STREAM)
        b1 = await store.append("b", events(2), expected_version=NO_STREAM)
        a2 = await store.append("a", events(1), expected_version=3)

        assert [e.version for e in a1.events] == [1, 2, 3]
        assert [e.version for e in b1.events] == [1, 2]
        assert [e.version for e in a2.events] == [4]
        assert (a1.version, b1.version, a2.version) == (3, 2, 4)
        everything = await store.read_all()
        positions = [e.position for e in everything]
        assert positions == sorted(set(positions))
        assert [e.event_id for e in everything] == [
            e.event_id for e in (*a1.events, *b1.events, *a2.events)
        ]
        assert a2.last_position == positions[-1] == await store.last_position()
        assert await store.stream_version("a") == 4
        assert await store.stream_version("b") == 2
        assert [e.version for e in await store.read_stream("a")] == [1, 2, 3, 4]

    async def test_read_stream_after_version(self, store: SqlEventStore) -> None:
        await store.append("a", events(5), expected_version=NO_STREAM)
        assert [e.version for e in await store.read_stream("a", after_version=3)] == [4, 5]
        assert await store.read_stream("a", after_version=5) == []

    async def test_read_all_in_batches(self, store: SqlEventStore) -> None:
        for index in range(5):
            await store.append(f"s-{index}", events(5), expected_version=NO_STREAM)
        sizes = []
        after = 0
        while batch := await store.read_all(after_position=after, limit=10):
            sizes.append(len(batch))
            after = batch[-1].position
        assert sizes == [10, 10, 5]
        assert await store.read_all(limit=0) == []
        assert len(await read_everything(store)) == 25

    async def test_read_all_of_some_types(self, store: SqlEventStore) -> None:
        kinds = ["A", "B", "C", "A", "B", "A"]
        await store.append("s", [event(type=kind) for kind in kinds], expected_version=NO_STREAM)
        picked = await store.read_all(types={"A", "C"})
        assert [(e.type, e.version) for e in picked] == [("A", 1), ("C", 3), ("A", 4), ("A", 6)]
        after = await store.read_all(after_position=picked[1].position, limit=1, types={"A"})
        assert [e.version for e in after] == [4]
        assert await store.read_all(types=set()) == []
        assert await store.read_all(types={"Z"}) == []

    async def test_large_batch(self, store: SqlEventStore) -> None:
        await store.append("a", events(1), expected_version=NO_STREAM)
        result = await store.append("a", events(1201), expected_version=1, command_id="big")
        stored = await store.read_stream("a", after_version=1)
        assert stored == list(result.events)
        assert [e.version for e in stored] == list(range(2, 1203))
        assert [e.position for e in stored] == list(range(2, 1203))
        again = await store.append("a", events(3), expected_version=1, command_id="big")
        assert again.duplicate
        assert again.events == result.events

    async def test_append_without_events(self, store: SqlEventStore) -> None:
        await store.append("a", events(2), expected_version=NO_STREAM)
        result = await store.append("a", [], expected_version=2)
        assert (result.version, result.events, result.duplicate) == (2, (), False)
        with pytest.raises(ConcurrencyConflict):
            await store.append("a", [], expected_version=1)

    # --- optimistic concurrency ------------------------------------------------------------

    async def test_no_stream_creates_only_once(self, store: SqlEventStore) -> None:
        await store.append("a", events(1), expected_version=NO_STREAM)
        with pytest.raises(ConcurrencyConflict) as caught:
            await store.append("a", events(1), expected_version=NO_STREAM)
        assert (caught.value.stream_id, caught.value.expected, caught.value.actual) == ("a", 0, 1)
        assert caught.value.code == "concurrency_conflict"

    @pytest.mark.parametrize("expected", [1, 2, 4, 5])
    async def test_conflict_when_expected_is_behind_or_ahead(
        self, store: SqlEventStore, expected: int
    ) -> None:
        await store.append("a", events(3), expected_version=NO_STREAM)
        with pytest.raises(ConcurrencyConflict) as caught:
            await store.append("a", events(2), expected_version=expected)
        assert (caught.value.expected, caught.value.actual) == (expected, 3)
        assert isinstance(caught.value, IntegrityError)
        assert isinstance(caught.value, StoreError)
        assert await store.stream_version("a") == 3
        assert len(await store.read_all()) == 3

    async def test_none_skips_the_check(self, store: SqlEventStore) -> None:
        await store.append("a", events(2), expected_version=None)
        result = await store.append("a", events(1), expected_version=None)
        assert result.version == 3

    async def test_negative_expected_version_is_refused(self, store: SqlEventStore) -> None:
        # Refused as bad input, not as a lost race: ConcurrencyConflict is an
        # IntegrityError too, and a store without the check would raise that one.
        with pytest.raises(IntegrityError) as refused:
            await store.append("a", events(1), expected_version=-1)
        assert not isinstance(refused.value, ConcurrencyConflict)
        assert "expected_version" in str(refused.value)
        assert await store.read_all() == []

    # --- atomicity -------------------------------------------------------------------------

    async def test_conflicting_batch_stores_nothing(self, store: SqlEventStore) -> None:
        await store.append("a", events(1), expected_version=NO_STREAM)
        with pytest.raises(ConcurrencyConflict):
            await store.append("a", events(5), expected_version=NO_STREAM)
        assert len(await store.read_all()) == 1

    async def test_event_id_of_another_stream_fails_the_whole_batch(
        self, store: SqlEventStore
    ) -> None:
        await store.append("a", [event("taken")], expected_version=NO_STREAM)
        fresh = event()
        with pytest.raises(IntegrityError) as caught:
            await store.append("b", [fresh, event("taken")], expected_version=NO_STREAM)
        assert not isinstance(caught.value, ConcurrencyConflict)
        assert "taken" in caught.value.message
        assert await store.stream_version("b") == 0
        assert len(await store.read_all()) == 1
        # Nothing of the failed batch stuck: its fresh id is still free.
        result = await store.append("b", [fresh], expected_version=NO_STREAM)
        assert result.events[0].event_id == fresh.event_id

    async def test_batch_repeating_an_event_id_is_refused(self, store: SqlEventStore) -> None:
        with pytest.raises(IntegrityError):
            await store.append("a", [event("x"), event("x")], expected_version=NO_STREAM)
        assert await store.last_position() == 0

    async def test_batch_partly_overlapping_an_earlier_one_is_refused(
        self, store: SqlEventStore
    ) -> None:
        await store.append("a", [event("x"), event("y")], expected_version=NO_STREAM)
        with pytest.raises(IntegrityError):
            await store.append("a", [event("y"), event("z")], expected_version=2)
        assert await store.stream_version("a") == 2

    # --- idempotency -----------------------------------------------------------------------

    async def test_same_events_again_return_the_earlier_result(self, store: SqlEventStore) -> None:
        batch = [event("e-1"), event("e-2")]
        first = await store.append("a", batch, expected_version=NO_STREAM)
        await store.append("a", events(1), expected_version=2)
        # Redelivered with its original (now stale) expected version, and without one.
        for expected in (NO_STREAM, None):
            again = await store.append("a", batch, expected_version=expected)
            assert again.duplicate
            assert again.events == first.events
            assert again.version == 2
        assert len(await store.read_all()) == 3

    async def test_command_id_returns_the_earlier_result(self, store: SqlEventStore) -> None:
        first = await store.append("a", events(2), expected_version=NO_STREAM, command_id="c-1")
        # A redelivered command decided again: fresh event ids, stale or absent expectation,
        # even another stream. The earlier answer wins; nothing is stored.
        for stream_id, expected in (("a", NO_STREAM), ("a", None), ("a", 2), ("b", NO_STREAM)):
            again = await store.append(
                stream_id, events(3), expected_version=expected, command_id="c-1"
            )
            assert again.duplicate
            assert again.stream_id == "a"
            assert again.events == first.events
            assert again.version == 2
        assert len(await store.read_all()) == 2
        assert await store.stream_version("b") == 0

    async def test_find_command(self, store: SqlEventStore) -> None:
        await store.append("a", events(1), expected_version=NO_STREAM)
        result = await store.append("a", events(2), expected_version=1, command_id="c-1")
        record = await store.find_command("c-1")
        assert record is not None
        assert (record.command_id, record.stream_id, record.rejected) == ("c-1", "a", False)
        assert record.events == result.events
        assert await store.find_command("c-2") is None

    async def test_rejected_command_is_remembered(self, store: SqlEventStore) -> None:
        await store.append("a", events(1), expected_version=NO_STREAM)
        record = await store.record_rejection("c-1", "a", "invalid_transition", "job is done")
        assert record.rejected
        assert (record.stream_id, record.error_code, record.error_message, record.events) == (
            "a",
            "invalid_transition",
            "job is done",
            (),
        )
        again = await store.record_rejection("c-1", "a", "other", "other message")
        assert again == record
        assert await store.find_command("c-1") == record
        # An append under a refused command id stores nothing and says so.
        for expected in (1, NO_STREAM, None):
            result = await store.append("a", events(1), expected_version=expected, command_id="c-1")
            assert (result.duplicate, result.events, result.stream_id) == (True, (), "a")
            assert result.version == 1
        assert await store.stream_version("a") == 1

    async def test_rejection_never_overwrites_an_accepted_command(
        self, store: SqlEventStore
    ) -> None:
        accepted = await store.append("a", events(1), expected_version=NO_STREAM, command_id="c")
        record = await store.record_rejection("c", "a", "invalid_transition", "too late")
        assert not record.rejected
        assert record.events == accepted.events

    # --- concurrency -----------------------------------------------------------------------

    async def test_concurrent_creators_exactly_one_wins(self, store: SqlEventStore) -> None:
        async with self.more_stores(3) as others:
            stores = [store, *others]

            async def create(index: int) -> AppendResult | None:
                try:
                    return await stores[index % len(stores)].append(
                        "contested", events(2), expected_version=NO_STREAM
                    )
                except ConcurrencyConflict:
                    return None

            results = await asyncio.gather(*(create(i) for i in range(20)))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert await store.read_stream("contested") == list(winners[0].events)

    async def test_concurrent_appenders_on_one_stream_keep_versions_contiguous(
        self, store: SqlEventStore
    ) -> None:
        async with self.more_stores(3) as others:
            stores = [store, *others]
            batches = [[event(f"w{i}")] for i in range(20)]
            conflicts = await asyncio.gather(
                *(
                    append_retrying(stores[i % len(stores)], "contested", batch)
                    for i, batch in enumerate(batches)
                )
            )
        stored = await store.read_stream("contested")
        assert [e.version for e in stored] == list(range(1, 21))
        assert sorted(e.event_id for e in stored) == sorted(f"w{i}" for i in range(20))
        assert sum(conflicts) > 0  # the appenders really met

    async def test_concurrent_appenders_on_different_streams_all_succeed(
        self, store: SqlEventStore
    ) -> None:
        async with self.more_stores(3) as others:
            stores = [store, *others]

            async def writer(index: int) -> list[AppendResult]:
                target = stores[index % len(stores)]
                return [
                    await target.append(f"s-{index}", events(2), expected_version=version * 2)
                    for version in range(5)
                ]

            written = await asyncio.gather(*(writer(i) for i in range(12)))
        everything = await read_everything(store)
        assert len(everything) == 12 * 5 * 2
        positions = [e.position for e in everything]
        assert positions == sorted(set(positions))
        # Stamped under the append lock: time never runs backwards along the log.
        assert all(a.recorded_at <= b.recorded_at for a, b in itertools.pairwise(everything))
        for index, results in enumerate(written):
            stream = [e for e in everything if e.stream_id == f"s-{index}"]
            assert [e.version for e in stream] == list(range(1, 11))
            assert [e for r in results for e in r.events] == stream

    async def test_identical_concurrent_appends_store_once(self, store: SqlEventStore) -> None:
        async with self.more_stores(3) as others:
            stores = [store, *others]
            batch = events(3)
            same_events = await asyncio.gather(
                *(s.append("a", batch, expected_version=None) for s in stores * 3)
            )
            same_command = await asyncio.gather(
                *(
                    s.append("b", events(2), expected_version=None, command_id="c-1")
                    for s in stores * 3
                )
            )
        for results in (same_events, same_command):
            originals = [r for r in results if not r.duplicate]
            assert len(originals) == 1
            assert all(r.events == originals[0].events for r in results)
        assert await store.stream_version("a") == 3
        assert await store.stream_version("b") == 2

    async def test_reader_following_the_log_never_skips(self, store: SqlEventStore) -> None:
        writers, appends_per_writer = 6, 15
        rng = random.Random(7)
        plan = [
            [
                (f"s-{w}-{rng.randrange(3)}", events(rng.randint(1, 3)))
                for _ in range(appends_per_writer)
            ]
            for w in range(writers)
        ]
        expected_ids = {e.event_id for appends in plan for _, batch in appends for e in batch}
        async with self.more_stores(writers + 1) as stores:
            reader, writer_stores = stores[0], stores[1:]
            seen: list[RecordedEvent] = []

            async def follow() -> None:
                while len(seen) < len(expected_ids):
                    after = seen[-1].position if seen else 0
                    batch = await reader.read_all(after_position=after, limit=7)
                    seen.extend(batch)
                    if not batch:
                        await asyncio.sleep(0)

            async def write(
                target: SqlEventStore, appends: list[tuple[str, list[NewEvent]]]
            ) -> None:
                for stream_id, batch in appends:
                    await target.append(stream_id, batch, expected_version=None)

            follower = asyncio.create_task(follow())
            await asyncio.gather(*(write(s, p) for s, p in zip(writer_stores, plan, strict=True)))
            await asyncio.wait_for(follower, timeout=20)

        positions = [e.position for e in seen]
        assert all(a < b for a, b in itertools.pairwise(positions))
        assert [e.event_id for e in seen] == [e.event_id for e in await read_everything(store)]
        assert {e.event_id for e in seen} == expected_ids
        assert len(seen) == len(expected_ids)

    # --- tracking --------------------------------------------------------------------------

    async def test_tracking_only_moves_forward(self, store: SqlEventStore) -> None:
        await store.set_tracking("relay", 5)
        await store.set_tracking("relay", 3)
        assert await store.get_tracking("relay") == 5
        await store.set_tracking("relay", 9)
        assert await store.get_tracking("relay") == 9
        assert await store.get_tracking("projection") == 0
        with pytest.raises(IntegrityError):
            await store.set_tracking("relay", -1)

    async def test_concurrent_tracking_keeps_the_highest(self, store: SqlEventStore) -> None:
        positions = list(range(1, 41))
        random.Random(3).shuffle(positions)
        async with self.more_stores(2) as others:
            stores = [store, *others]
            await asyncio.gather(
                *(stores[i % 3].set_tracking("relay", p) for i, p in enumerate(positions))
            )
        assert await store.get_tracking("relay") == 40

    # --- schema ----------------------------------------------------------------------------

    async def test_setup_is_idempotent(self, store: SqlEventStore) -> None:
        await store.append("a", events(2), expected_version=NO_STREAM)
        await store.setup()
        await store.setup()
        assert await store.stream_version("a") == 2
        assert await store.schema_version() == _sqlschema.CURRENT_VERSION

    async def test_concurrent_setup_of_a_fresh_database(self) -> None:
        async with self.more_stores(4) as stores:
            assert await stores[0].schema_version() == 0
            await asyncio.gather(*(s.setup() for s in stores))
            async with stores[0].engine.connect() as conn:
                rows = (await conn.execute(sa.select(_sqlschema.schema_version.c.version))).all()
            assert [row[0] for row in rows] == [m.version for m in _sqlschema.MIGRATIONS]
            result = await stores[1].append("a", events(1), expected_version=NO_STREAM)
            assert result.version == 1

    async def test_newer_schema_is_refused(self, store: SqlEventStore) -> None:
        async with store.engine.begin() as conn:
            await conn.execute(
                sa.insert(_sqlschema.schema_version).values(
                    version=_sqlschema.CURRENT_VERSION + 1,
                    description="from the future",
                    applied_at=datetime.now(UTC),
                )
            )
        async with self.more_stores(1) as (newer,):
            with pytest.raises(SchemaVersionError) as caught:
                await newer.setup()
        assert "upgrade" in caught.value.message

    def test_migrations_are_numbered_in_order(self) -> None:
        versions = [m.version for m in _sqlschema.MIGRATIONS]
        assert versions == list(range(1, len(versions) + 1))
        for migration in _sqlschema.MIGRATIONS:
            assert set(migration.statements) == {"sqlite", "postgresql"}

    # --- errors ----------------------------------------------------------------------------

    async def test_use_before_setup_is_a_store_error(self) -> None:
        async with self.more_stores(1) as (fresh,):
            with pytest.raises(StoreError) as caught:
                await fresh.read_all()
            assert caught.value.code == "store_not_set_up"
            assert "setup()" in caught.value.message
            with pytest.raises(StoreError) as caught:
                await fresh.append("a", events(1), expected_version=NO_STREAM)
            assert caught.value.code == "store_not_set_up"

    async def test_undecodable_metadata_is_a_store_error(self, store: SqlEventStore) -> None:
        async with store.engine.begin() as conn:
            await conn.execute(
                sa.insert(_sqlschema.events).values(
                    position=1,
                    stream_id="a",
                    version=1,
                    event_id="bad",
                    type="Tested",
                    schema_version=1,
                    payload=b"{}",
                    metadata='{"trace": 5}',
                    recorded_at=datetime.now(UTC),
                )
            )
        with pytest.raises(StoreError) as caught:
            await store.read_all()
        assert caught.value.code == "store_corrupt"

    async def test_closed_store_refuses_appends(self) -> None:
        opened = self.open_store()
        await opened.setup()
        await opened.close()
        await opened.close()
        with pytest.raises(StoreError) as caught:
            await opened.append("a", events(1), expected_version=NO_STREAM)
        assert caught.value.code == "store_closed"
