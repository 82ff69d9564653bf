"""Direct reads of the SQL event store that the hot path never needs: the audit chain.

Kept apart from :mod:`swift_trainer.core.sqlstore` because nothing on the hot path needs
them: auditors read the rows exactly as stored (metadata as text, the stored hash), which
the store's ``read_all`` deliberately does not hand out; the webhook dispatcher lists the
streams of one kind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Final

import sqlalchemy as sa

from swift_trainer.core import _sqlschema as schema
from swift_trainer.core._sqlerrors import store_errors
from swift_trainer.core.audit_chain import ChainAnchor, ChainRow, ChainVerifier, chain_time
from swift_trainer.core.sqlstore import _EVENT_COLUMNS, SqlEventStore

_CHAIN_COLUMNS: Final = (*_EVENT_COLUMNS, schema.events.c.hash)


async def migrated_through(store: SqlEventStore) -> int:
    """The last position the version-3 migration hashed (gaps up to it are historical)."""
    with store_errors("read the audit chain start"):
        async with store.engine.connect() as conn:
            value = (await conn.execute(sa.select(schema.audit_chain.c.migrated_through))).scalar()
    return int(value or 0)


async def chain_rows(
    store: SqlEventStore,
    *,
    after_position: int = 0,
    until_position: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    batch_size: int = 5000,
) -> AsyncIterator[list[ChainRow]]:
    """Stored rows in position order, a batch at a time, optionally bounded by time."""
    position = after_position
    while True:
        query = (
            sa.select(*_CHAIN_COLUMNS)
            .where(schema.events.c.position > position)
            .order_by(schema.events.c.position)
            .limit(batch_size)
        )
        if until_position is not None:
            query = query.where(schema.events.c.position <= until_position)
        if since is not None:
            query = query.where(schema.events.c.recorded_at >= since)
        if until is not None:
            query = query.where(schema.events.c.recorded_at < until)
        with store_errors("read the audit chain"):
            async with store.engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        if not rows:
            return
        yield [
            ChainRow(
                position=row[0],
                stream_id=row[1],
                version=row[2],
                event_id=row[3],
                type=row[4],
                schema_version=row[5],
                payload=bytes(row[6]),
                metadata=row[7],
                recorded_at=chain_time(row[8]),
                hash=bytes(row[9]).hex() if row[9] is not None else None,
            )
            for row in rows
        ]
        position = rows[-1][0]


async def streams_with_prefix(store: SqlEventStore, prefix: str) -> list[str]:
    """Stream ids starting with ``prefix``, sorted: a range scan of the stream index."""
    query = (
        sa.select(schema.events.c.stream_id)
        .where(
            schema.events.c.stream_id >= prefix,
            schema.events.c.stream_id < prefix + "\U0010ffff",
        )
        .distinct()
        .order_by(schema.events.c.stream_id)
    )
    with store_errors(f"list streams {prefix}*"):
        async with store.engine.connect() as conn:
            return [row[0] for row in (await conn.execute(query)).all()]


async def anchor_before(store: SqlEventStore, position: int) -> ChainAnchor | None:
    """The stored link just before ``position``: where an export starting there hangs on."""
    query = (
        sa.select(schema.events.c.position, schema.events.c.hash)
        .where(schema.events.c.position < position)
        .order_by(schema.events.c.position.desc())
        .limit(1)
    )
    with store_errors("read the audit chain"):
        async with store.engine.connect() as conn:
            row = (await conn.execute(query)).first()
    if row is None:
        return None
    return ChainAnchor(position=row[0], hash=bytes(row[1]).hex() if row[1] else "")


async def verify_chain(store: SqlEventStore) -> ChainVerifier:
    """Recompute the whole chain from the stored rows; the verifier holds the problems."""
    verifier = ChainVerifier(strict_from=await migrated_through(store))
    async for batch in chain_rows(store):
        verifier.check(batch)
    return verifier
