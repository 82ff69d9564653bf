"""Replay speed of ``audit verify`` on 100k real job events, SQLite and PostgreSQL.

Run: ``uv run python tests/perf/bench_audit.py [--events N] [--no-postgres]``
(not collected by pytest: the file name does not start with ``test_``).

The store is filled with histories the domain itself produced (submit, queue, schedule,
start, progress reports, success), so the verifier decodes and folds real events. Each
line prints verify's events/second (hash chain + gap check + fold of every stream) next to
the baseline measured in the same run on the same store: a bare ``read_all`` replay that
only reads and decodes the rows, which is the least any replay must pay. The ratio says what
the audit's hashing and folding cost on top.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from itertools import groupby
from pathlib import Path

import asyncpg

from swift_trainer.core.sqlstore import SqlEventStore, open_event_store
from swift_trainer.core.store import NewEvent
from swift_trainer.projections.audit import verify_store

# Run as a script, so the repository root (for ``tests.``) is not on the path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

PG_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
#: Progress reports per job; with the other events a job's stream holds this many plus 6.
PROGRESS_PER_JOB = 44


def _histories(total: int) -> list[tuple[str, list[NewEvent]]]:
    from tests.projections.read_models.history import History

    history = History()
    job = 0
    while len(history.records) < total:
        job_id = f"bench-{job:06d}"
        history.submit(job_id)
        history.schedule(job_id)
        history.started(job_id)
        for step in range(1, PROGRESS_PER_JOB + 1):
            history.progress(job_id, step, max_steps=PROGRESS_PER_JOB, loss=2.0 / step)
        history.succeed(job_id)
        job += 1
    records = history.records[:total]
    return [
        (stream, [NewEvent(r.event_id, r.type, r.payload, metadata=r.metadata) for r in group])
        for stream, group in groupby(records, key=lambda r: r.stream_id)
    ]


async def _fill(store: SqlEventStore, streams: list[tuple[str, list[NewEvent]]]) -> None:
    for stream_id, new in streams:
        await store.append(stream_id, new, expected_version=None)


async def _bare_replay(store: SqlEventStore) -> float:
    from swift_trainer.core import events as e

    started, position, count = time.perf_counter(), 0, 0
    while batch := await store.read_all(after_position=position, limit=5000):
        for recorded in batch:
            e.decode_event(recorded.type, recorded.payload, recorded.schema_version)
        count += len(batch)
        position = batch[-1].position
    return count / (time.perf_counter() - started)


async def _measure(name: str, store: SqlEventStore, total: int) -> None:
    await store.setup()
    try:
        filled = time.perf_counter()
        await _fill(store, _histories(total))
        fill_s = time.perf_counter() - filled
        baseline = await _bare_replay(store)
        report = await verify_store(store)
        assert report.ok, report
        print(
            f"{name:<10} {report.events:>8} events  verify {report.events_per_second:>10,.0f} ev/s"
            f"  ({report.seconds:.2f} s)   bare replay {baseline:>10,.0f} ev/s"
            f"   ratio {report.events_per_second / baseline:.2f}   (fill {fill_s:.1f} s)"
        )
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite+aiosqlite:///{Path(folder) / 'events.db'}"
        await _measure("sqlite", open_event_store(url, sqlite_synchronous="OFF"), args.events)
    if args.no_postgres:
        return
    schema = f"bench_audit_{uuid.uuid4().hex[:8]}"
    try:
        await _measure("postgresql", open_event_store(PG_URL, schema_name=schema), args.events)
    finally:
        conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
