"""The audit hash chain on SQLite and PostgreSQL: written at append, checked by the verifier.

Tampering is done the way an intruder would: SQL straight at the tables, behind the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.core.eventstore_contract import event, events

from swift_trainer.core import _sqlschema
from swift_trainer.core.audit_chain import (
    ChainVerifier,
    ExportLine,
    export_line,
    read_export,
)
from swift_trainer.core.sqlaudit import anchor_before, chain_rows, verify_chain
from swift_trainer.core.sqlstore import SqlEventStore, open_event_store
from swift_trainer.core.store import NO_STREAM


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'events.db'}", None
    url: str = request.getfixturevalue("postgres_url")
    schema: str = request.getfixturevalue("postgres_schema")
    return url, schema


@pytest.fixture
async def store(store_url: tuple[str, str | None]) -> AsyncIterator[SqlEventStore]:
    opened = open_event_store(store_url[0], schema_name=store_url[1])
    await opened.setup()
    try:
        yield opened
    finally:
        await opened.close()


async def _fill(store: SqlEventStore) -> None:
    """Single appends, a batch, a conflict and a duplicate: every path that writes rows."""
    await store.append("job-a", events(3), expected_version=NO_STREAM)
    await store.append("job-b", [event("b-1")], expected_version=NO_STREAM, command_id="c1")
    await store.append("job-b", [event("b-1")], expected_version=NO_STREAM, command_id="c1")
    await store.append("job-a", events(2), expected_version=3)
    await store.append("job-c", [event(payload=b'{"caf\xc3\xa9": 1}')], expected_version=None)


async def _execute(store: SqlEventStore, sql: str, **params: object) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(sa.text(sql), params)


async def test_a_fresh_store_verifies(store: SqlEventStore) -> None:
    await _fill(store)
    verifier = await verify_chain(store)
    assert verifier.problems == []
    assert verifier.checked == 7
    assert verifier.head.position == 7


async def test_one_changed_payload_byte_is_named(store: SqlEventStore) -> None:
    await _fill(store)
    async with store.engine.connect() as conn:
        payload = (
            await conn.execute(sa.text("SELECT payload FROM events WHERE position = 4"))
        ).scalar_one()
    tampered = bytes(payload[:-2]) + bytes([payload[-2] ^ 1]) + bytes(payload[-1:])
    await _execute(store, "UPDATE events SET payload = :p WHERE position = 4", p=tampered)
    verifier = await verify_chain(store)
    assert [(p.position, p.kind) for p in verifier.problems] == [(4, "hash_mismatch")]
    assert "position 4" in verifier.problems[0].message


async def test_a_deleted_row_is_named(store: SqlEventStore) -> None:
    await _fill(store)
    await _execute(store, "DELETE FROM events WHERE position = 5")
    verifier = await verify_chain(store)
    assert [(p.position, p.kind) for p in verifier.problems] == [
        (5, "missing_position"),
        (6, "hash_mismatch"),
    ]
    assert "position 5 is missing" in verifier.problems[0].message


async def test_a_changed_time_or_metadata_is_named(store: SqlEventStore) -> None:
    await _fill(store)
    await _execute(
        store, "UPDATE events SET metadata = :m WHERE position = 2", m='{"actor":"someone"}'
    )
    verifier = await verify_chain(store)
    assert [(p.position, p.kind) for p in verifier.problems] == [(2, "hash_mismatch")]


async def test_the_export_verifies_with_the_same_logic(store: SqlEventStore) -> None:
    await _fill(store)
    lines = [export_line(ExportLine(anchor=await anchor_before(store, 3)))]
    async for batch in chain_rows(store, after_position=2):
        lines.extend(export_line(ExportLine(event=row)) for row in batch)
    anchor, rows = read_export(lines)
    verifier = ChainVerifier(anchor)
    verifier.check(rows)
    assert (verifier.problems, verifier.checked) == ([], 5)

    changed = lines[2].replace(b'"type":"Tested"', b'"type":"Texted"')
    anchor, rows = read_export([lines[0], lines[1], changed, *lines[3:]])
    verifier = ChainVerifier(anchor)
    verifier.check(rows)
    assert [p.position for p in verifier.problems] == [4]


async def test_a_store_from_before_the_chain_is_hashed_by_the_migration(
    store_url: tuple[str, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version-1 database with events (and a gap, as refused PostgreSQL appends left)."""
    old = open_event_store(store_url[0], schema_name=store_url[1])
    monkeypatch.setattr(_sqlschema, "MIGRATIONS", _sqlschema.MIGRATIONS[:1])
    monkeypatch.setattr(_sqlschema, "CURRENT_VERSION", 1)
    try:
        await old.setup()
        async with old.engine.begin() as conn:
            for position in (1, 2, 4):
                await conn.execute(
                    sa.insert(_sqlschema.events).values(
                        position=position,
                        stream_id="job-x",
                        version=position,
                        event_id=f"old-{position}",
                        type="Tested",
                        schema_version=1,
                        payload=b"{}",
                        metadata="{}",
                        recorded_at=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
                    )
                )
    finally:
        await old.close()
    monkeypatch.undo()
    store = open_event_store(store_url[0], schema_name=store_url[1])
    try:
        await store.setup()
        assert await store.schema_version() == _sqlschema.CURRENT_VERSION
        await store.append("job-y", events(2), expected_version=NO_STREAM)
        verifier = await verify_chain(store)
        assert verifier.problems == []
        assert [e.position for e in await store.read_all()] == [1, 2, 4, 5, 6]
    finally:
        await store.close()


async def test_concurrent_appends_keep_one_unbroken_chain(
    store: SqlEventStore, store_url: tuple[str, str | None]
) -> None:
    """Group commits (SQLite) and overlapping writers (PostgreSQL) still chain in order."""
    others = [open_event_store(store_url[0], schema_name=store_url[1]) for _ in range(2)]
    try:
        writers = [store, *others]
        await asyncio.gather(
            *(
                writers[i % 3].append(f"job-{i % 7}", events(1 + i % 3), expected_version=None)
                for i in range(60)
            )
        )
    finally:
        for other in others:
            await other.close()
    verifier = await verify_chain(store)
    assert verifier.problems == []
    assert verifier.checked == sum(1 + i % 3 for i in range(60))
