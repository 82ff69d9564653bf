"""``projections.audit``: verify with the read models, a job's trail, its state as of a moment."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from tests.projections.audit_history import TRACE_ID, store_history
from tests.projections.read_models.conftest import redis_url  # noqa: F401 - fixture

from swift_trainer.core.sqlstore import SqlEventStore, open_event_store
from swift_trainer.projections.audit import job_history, job_state_as_of, verify_store
from swift_trainer.projections.read_models import RedisReadModel, catch_up


@pytest.fixture
async def sql_store(tmp_path: Path) -> AsyncIterator[SqlEventStore]:
    opened = open_event_store(f"sqlite+aiosqlite:///{tmp_path / 'events.db'}")
    await opened.setup()
    try:
        yield opened
    finally:
        await opened.close()


async def test_verify_passes_on_an_intact_store(sql_store: SqlEventStore) -> None:
    stored = await store_history(sql_store)
    report = await verify_store(sql_store)
    assert report.ok, report
    assert (report.events, report.streams) == (len(stored.events), 2)
    assert report.read_models == "not checked"
    assert report.events_per_second > 0


async def test_an_event_the_domain_cannot_fold_is_named(sql_store: SqlEventStore) -> None:
    await store_history(sql_store)
    async with sql_store.engine.begin() as conn:
        await conn.execute(sa.text("UPDATE events SET type = 'JobDeleted' WHERE position = 4"))
    report = await verify_store(sql_store)
    assert not report.ok
    assert [p.position for p in report.chain_problems] == [4]
    assert [p.position for p in report.stream_problems] == [4]


async def test_read_models_are_compared_without_wiping_them(
    sql_store: SqlEventStore,
    redis_url: str,  # noqa: F811 - the imported fixture
) -> None:
    await store_history(sql_store)
    live = RedisReadModel.from_url(redis_url, prefix=f"test-audit-{uuid.uuid4().hex[:12]}:")
    try:
        await catch_up(sql_store, live)
        report = await verify_store(sql_store, live)
        assert (report.ok, report.read_models) == (True, "equal")

        # A summary changed behind the projector's back: named, and left as it was.
        job = await live.get_job("train-2")
        assert job is not None
        key = f"{live.prefix}job:train-2"
        client = aioredis.Redis.from_url(redis_url)
        try:
            raw = await client.get(key)
            assert raw is not None and b'"priority":9' in raw
            await client.set(key, raw.replace(b'"priority":9', b'"priority":1'))
        finally:
            await client.aclose()
        report = await verify_store(sql_store, live)
        assert not report.ok
        assert report.read_models == "different"
        assert report.read_model_differences == ["jobs[train-2]"]
        changed = await live.get_job("train-2")
        assert changed is not None and changed.priority == 1
    finally:
        await live.wipe()
        await live.close()


async def test_history_names_actor_command_and_trace(sql_store: SqlEventStore) -> None:
    stored = await store_history(sql_store)
    entries = await job_history(sql_store, "train-1")
    train_1 = [e for e in stored.events if e.stream_id == "job-train-1"]
    assert [e.position for e in entries] == [e.position for e in train_1]
    first = entries[0]
    assert (first.event, first.actor, first.command_id, first.trace_id) == (
        "JobSubmitted",
        "key-alice",
        "cmd-1",
        TRACE_ID,
    )
    assert "priority=7" in first.summary
    assert any("loss=0.75" in e.summary for e in entries)
    assert await job_history(sql_store, "nobody") == []


async def test_state_as_of_matches_the_state_at_that_moment(sql_store: SqlEventStore) -> None:
    stored = await store_history(sql_store)
    by_position = {e.position: e for e in stored.events}
    for position, expected in stored.states:
        state, last = await job_state_as_of(sql_store, "train-1", position=position)
        assert (state, last) == (expected, position)
        # The same moment named by time: the event's recorded time.
        at = by_position[position].recorded_at
        state, last = await job_state_as_of(sql_store, "train-1", at=at)
        assert (state, last) == (expected, position)
    state, last = await job_state_as_of(sql_store, "train-1", position=0)
    assert (state.version, last) == (0, 0)
