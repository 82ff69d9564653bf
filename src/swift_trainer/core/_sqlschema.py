"""Tables of the SQL event store and the numbered steps that build them.

The :class:`~sqlalchemy.Table` objects describe the schema as the code reads it today; the
migration steps are frozen DDL, one list per dialect. A step, once released, never
changes: a later schema change is a new step, so a database created by any release can be
brought to the current shape by applying the steps it lacks, in order.

Why the events table looks the way it does:

- ``position`` is the global log order. PostgreSQL assigns it from an identity sequence
  while the appender holds the table lock (see :mod:`swift_trainer.core.sqlstore`), so
  positions follow commit order. SQLite uses the rowid (``INTEGER PRIMARY KEY``) and the
  appender writes ``max(position) + 1`` explicitly under ``BEGIN IMMEDIATE``; events are
  never deleted, so a position is never reused.
- ``UNIQUE (stream_id, version)`` is the backstop for optimistic concurrency and the index
  that answers "what version is this stream at" with one backward index probe, so no
  separate streams table has to be written on every append.
- ``UNIQUE (event_id)`` makes redelivered events harmless.

``commands`` remembers every command id's outcome: the position range of the events it
stored, or the error it was refused with (``CommandLog.record_rejection``), so a retried
command gets the same answer. ``tracking`` holds followers' positions; ``schema_version``
the migration steps applied.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from swift_trainer.core.audit_chain import GENESIS_HASH, chain_time, event_hash

metadata_obj: Final = sa.MetaData()


class UtcDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that always comes back timezone-aware, in UTC.

    PostgreSQL stores ``timestamptz``; SQLite has no timestamp type and keeps SQLAlchemy's
    naive text format, which this store only ever writes in UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("recorded_at must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


events: Final = sa.Table(
    "events",
    metadata_obj,
    sa.Column("position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("stream_id", sa.Text(), nullable=False),
    sa.Column("version", sa.BigInteger(), nullable=False),
    sa.Column("event_id", sa.Text(), nullable=False),
    sa.Column("type", sa.Text(), nullable=False),
    sa.Column("schema_version", sa.Integer(), nullable=False),
    sa.Column("payload", sa.LargeBinary(), nullable=False),
    sa.Column("metadata", sa.Text(), nullable=False),
    sa.Column("recorded_at", UtcDateTime(), nullable=False),
    # The audit hash chain (schema version 3, see ``core.audit_chain``); NULL only for a
    # row written behind the store's back, which ``audit verify`` reports.
    sa.Column("hash", sa.LargeBinary(), nullable=True),
    sa.UniqueConstraint("stream_id", "version", name="events_stream_version_key"),
    sa.UniqueConstraint("event_id", name="events_event_id_key"),
)

commands: Final = sa.Table(
    "commands",
    metadata_obj,
    sa.Column("command_id", sa.Text(), primary_key=True),
    sa.Column("stream_id", sa.Text(), nullable=False),
    sa.Column("first_position", sa.BigInteger()),
    sa.Column("last_position", sa.BigInteger()),
    sa.Column("error_code", sa.Text()),
    sa.Column("error_message", sa.Text()),
)

tracking: Final = sa.Table(
    "tracking",
    metadata_obj,
    sa.Column("name", sa.Text(), primary_key=True),
    sa.Column("position", sa.BigInteger(), nullable=False),
)

snapshots: Final = sa.Table(
    "snapshots",
    metadata_obj,
    sa.Column("stream_id", sa.Text(), primary_key=True),
    sa.Column("version", sa.BigInteger(), nullable=False),
    sa.Column("payload", sa.LargeBinary(), nullable=False),
)

schema_version: Final = sa.Table(
    "schema_version",
    metadata_obj,
    sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text(), nullable=False),
    sa.Column("applied_at", UtcDateTime(), nullable=False),
)

#: Created before any step runs: it is how setup() knows which steps are missing.
SCHEMA_VERSION_DDL: Final = {
    "sqlite": (
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)"
    ),
    "postgresql": (
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, description TEXT NOT NULL,"
        " applied_at TIMESTAMPTZ NOT NULL)"
    ),
}


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema step: the DDL for each dialect, applied in one transaction."""

    version: int
    description: str
    statements: dict[str, Sequence[str]]
    #: Runs after the DDL, in the same transaction: data a step computes (both dialects).
    backfill: Callable[[AsyncConnection], Awaitable[None]] | None = None


_SQLITE_V1: Final = (
    """
    CREATE TABLE events (
        position INTEGER PRIMARY KEY,
        stream_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        type TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        payload BLOB NOT NULL,
        metadata TEXT NOT NULL,
        recorded_at TEXT NOT NULL,
        CONSTRAINT events_stream_version_key UNIQUE (stream_id, version),
        CONSTRAINT events_event_id_key UNIQUE (event_id)
    )
    """,
    """
    CREATE TABLE commands (
        command_id TEXT PRIMARY KEY,
        stream_id TEXT NOT NULL,
        first_position INTEGER,
        last_position INTEGER,
        error_code TEXT,
        error_message TEXT
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE tracking (
        name TEXT PRIMARY KEY,
        position INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
)

#: Rows of ``earlier_append``: an outcome code, then the columns of an event.
_POSTGRES_APPEND_ROW: Final = """
        o_outcome SMALLINT,
        o_position BIGINT,
        o_stream_id TEXT,
        o_version BIGINT,
        o_event_id TEXT,
        o_type TEXT,
        o_schema_version INTEGER,
        o_payload BYTEA,
        o_metadata TEXT,
        o_recorded_at TIMESTAMPTZ
"""

#: What an append that is refused, or fails on a unique index, has to look up: the
#: command's earlier outcome (1: its events, 4: it was rejected; one row with the stream
#: and its version) or events already stored under the batch's ids (2). No rows: neither.
#: Off the hot path, and planned afresh per call: a generic plan cached while the table
#: was tiny would otherwise keep scanning the whole table long after it has grown.
_POSTGRES_EARLIER_FUNCTION: Final = f"""
    CREATE FUNCTION earlier_append(p_command_id TEXT, p_event_ids TEXT[])
    RETURNS TABLE ({_POSTGRES_APPEND_ROW})
    LANGUAGE plpgsql STABLE
    SET plan_cache_mode = force_custom_plan
    AS $body$
    DECLARE
        v_command commands%ROWTYPE;
    BEGIN
        IF p_command_id IS NOT NULL THEN
            SELECT * INTO v_command FROM commands c WHERE c.command_id = p_command_id;
            IF FOUND THEN
                IF v_command.error_code IS NOT NULL THEN
                    RETURN QUERY
                        SELECT 4::SMALLINT, NULL::BIGINT, v_command.stream_id,
                               (SELECT coalesce(max(e.version), 0) FROM events e
                                 WHERE e.stream_id = v_command.stream_id),
                               NULL::TEXT, NULL::TEXT, NULL::INTEGER, NULL::BYTEA, NULL::TEXT,
                               NULL::TIMESTAMPTZ;
                ELSE
                    RETURN QUERY
                        SELECT 1::SMALLINT, e.position, e.stream_id, e.version, e.event_id,
                               e.type, e.schema_version, e.payload, e.metadata, e.recorded_at
                          FROM events e
                         WHERE e.position BETWEEN v_command.first_position
                                              AND v_command.last_position
                           AND e.stream_id = v_command.stream_id
                         ORDER BY e.position;
                END IF;
                RETURN;
            END IF;
        END IF;
        RETURN QUERY
            SELECT 2::SMALLINT, e.position, e.stream_id, e.version, e.event_id, e.type,
                   e.schema_version, e.payload, e.metadata, e.recorded_at
              FROM events e
             WHERE e.event_id = ANY (p_event_ids)
             ORDER BY e.position;
    END;
    $body$
"""

#: The whole append in one round trip, returning one row (no set-returning machinery on
#: the hot path). It reads one thing, the stream's version (a backward probe of the
#: (stream_id, version) index), and leaves duplicate detection to the unique indexes: a
#: redelivered event id or command id fails the statement, which rolls everything back,
#: and the caller then asks ``earlier_append`` what was stored.
#: Outcomes: 0 appended (first position, first version, recorded_at); 3 version conflict
#: (o_version is the actual version); 5 version conflict, but the command or the events
#: were stored before: ``earlier_append`` has the answer.
_POSTGRES_APPEND_FUNCTION: Final = """
    CREATE FUNCTION append_events(
        p_stream_id TEXT,
        p_expected_version BIGINT,
        p_command_id TEXT,
        p_event_ids TEXT[],
        p_types TEXT[],
        p_schema_versions INTEGER[],
        p_payloads BYTEA[],
        p_metadata TEXT[],
        OUT o_outcome SMALLINT,
        OUT o_position BIGINT,
        OUT o_version BIGINT,
        OUT o_recorded_at TIMESTAMPTZ
    )
    LANGUAGE plpgsql VOLATILE AS $body$
    DECLARE
        v_current BIGINT;
        v_count INTEGER := cardinality(p_event_ids);
        v_last BIGINT;
    BEGIN
        -- EXCLUSIVE conflicts with every other writer of the table but not with readers
        -- (ACCESS SHARE). Taken before the identity sequence hands out positions, so the
        -- order of positions is the order of commits and a reader never passes a position
        -- that a slower transaction fills in later. Each statement below takes a fresh
        -- snapshot (READ COMMITTED), so it sees every append committed before the lock.
        LOCK TABLE events IN EXCLUSIVE MODE;
        -- Read after the lock, not now() (the transaction's start): timestamps then grow
        -- with positions, even for an appender that waited for the lock.
        o_recorded_at := clock_timestamp();

        SELECT coalesce(max(e.version), 0) INTO v_current
          FROM events e WHERE e.stream_id = p_stream_id;
        IF p_expected_version IS NOT NULL AND v_current <> p_expected_version THEN
            -- A redelivered command gets its earlier answer, not a conflict.
            PERFORM 1 FROM earlier_append(p_command_id, p_event_ids) LIMIT 1;
            o_outcome := CASE WHEN FOUND THEN 5 ELSE 3 END;
            o_version := v_current;
            RETURN;
        END IF;

        INSERT INTO events (stream_id, version, event_id, type, schema_version, payload,
                            metadata, recorded_at)
        SELECT p_stream_id, v_current + u.ord, u.event_id, u.type, u.schema_version,
               u.payload, u.metadata, o_recorded_at
          FROM unnest(p_event_ids, p_types, p_schema_versions, p_payloads, p_metadata)
               WITH ORDINALITY AS u(event_id, type, schema_version, payload, metadata, ord)
         ORDER BY u.ord;
        -- The rows drew consecutive values, in ``ord`` order: nothing else can draw from
        -- the sequence while the lock is held (every insert into events needs a lock that
        -- conflicts with it), so the last value and the count give every position.
        v_last := currval('events_position_seq');
        o_position := v_last - v_count + 1;
        IF p_command_id IS NOT NULL THEN
            INSERT INTO commands (command_id, stream_id, first_position, last_position)
            VALUES (p_command_id, p_stream_id, o_position, v_last);
        END IF;
        o_outcome := 0;
        o_version := v_current + 1;
    END;
    $body$
"""

_POSTGRES_V1: Final = (
    """
    CREATE TABLE events (
        position BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        stream_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        event_id TEXT NOT NULL,
        type TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        payload BYTEA NOT NULL,
        metadata TEXT NOT NULL,
        recorded_at TIMESTAMPTZ NOT NULL,
        CONSTRAINT events_stream_version_key UNIQUE (stream_id, version),
        CONSTRAINT events_event_id_key UNIQUE (event_id)
    )
    """,
    """
    CREATE TABLE commands (
        command_id TEXT PRIMARY KEY,
        stream_id TEXT NOT NULL,
        first_position BIGINT,
        last_position BIGINT,
        error_code TEXT,
        error_message TEXT
    )
    """,
    """
    CREATE TABLE tracking (
        name TEXT PRIMARY KEY,
        position BIGINT NOT NULL
    )
    """,
    _POSTGRES_EARLIER_FUNCTION,
    _POSTGRES_APPEND_FUNCTION,
)

#: Snapshots are a cache of folded state (a stream's state at a version): deleting the table's
#: rows loses nothing, the next load folds the stream from its first event again.
_SQLITE_V2: Final = (
    """
    CREATE TABLE snapshots (
        stream_id TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        payload BLOB NOT NULL
    ) WITHOUT ROWID
    """,
)
#: ``earlier_append`` again, now also answering for a command recorded as accepted without
#: events (``record_noop``: no error, no positions) as it does for a refused one: the
#: append stores nothing and reports a duplicate with no events.
_POSTGRES_EARLIER_FUNCTION_V2: Final = _POSTGRES_EARLIER_FUNCTION.replace(
    "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1
).replace(
    "IF v_command.error_code IS NOT NULL THEN",
    "IF v_command.error_code IS NOT NULL OR v_command.first_position IS NULL THEN",
    1,
)

assert "OR v_command.first_position IS NULL" in _POSTGRES_EARLIER_FUNCTION_V2

_POSTGRES_V2: Final = (
    """
    CREATE TABLE snapshots (
        stream_id TEXT PRIMARY KEY,
        version BIGINT NOT NULL,
        payload BYTEA NOT NULL
    )
    """,
    _POSTGRES_EARLIER_FUNCTION_V2,
)

audit_chain: Final = sa.Table(
    "audit_chain",
    metadata_obj,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("migrated_through", sa.BigInteger(), nullable=False),
)

#: One length-prefixed field of the chain encoding (see ``core.audit_chain``).
_POSTGRES_CHAIN_FIELD: Final = """
    CREATE FUNCTION chain_field(p_data BYTEA) RETURNS BYTEA
    LANGUAGE sql IMMUTABLE STRICT
    AS $body$ SELECT int8send(octet_length(p_data)::BIGINT) || p_data $body$
"""

#: The same bytes ``audit_chain.event_hash`` hashes, so Python verifies what SQL wrote.
_POSTGRES_EVENT_HASH: Final = """
    CREATE FUNCTION event_hash(
        p_previous_hash BYTEA, p_previous_position BIGINT, p_position BIGINT,
        p_stream_id TEXT, p_version BIGINT, p_event_id TEXT, p_type TEXT,
        p_schema_version INTEGER, p_payload BYTEA, p_metadata TEXT, p_recorded_at TIMESTAMPTZ
    ) RETURNS BYTEA
    LANGUAGE sql STABLE STRICT
    AS $body$
        SELECT sha256(
            p_previous_hash
            || int8send(p_previous_position) || int8send(p_position)
            || chain_field(convert_to(p_stream_id, 'UTF8'))
            || int8send(p_version)
            || chain_field(convert_to(p_event_id, 'UTF8'))
            || chain_field(convert_to(p_type, 'UTF8'))
            || int8send(p_schema_version::BIGINT)
            || chain_field(p_payload)
            || chain_field(convert_to(p_metadata, 'UTF8'))
            || chain_field(convert_to(
                   to_char(p_recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'),
                   'UTF8'))
        )
    $body$
"""

#: Version 3 of ``append_events``: same parameters and outcomes as version 1, plus the
#: hash chain. Positions are now ``max(position) + 1`` under the table lock instead of the
#: identity sequence, so a refused append leaves no gap and a gap always means a deleted row.
_POSTGRES_APPEND_FUNCTION_V3: Final = """
    CREATE FUNCTION append_events(
        p_stream_id TEXT,
        p_expected_version BIGINT,
        p_command_id TEXT,
        p_event_ids TEXT[],
        p_types TEXT[],
        p_schema_versions INTEGER[],
        p_payloads BYTEA[],
        p_metadata TEXT[],
        OUT o_outcome SMALLINT,
        OUT o_position BIGINT,
        OUT o_version BIGINT,
        OUT o_recorded_at TIMESTAMPTZ
    )
    LANGUAGE plpgsql VOLATILE AS $body$
    DECLARE
        v_current BIGINT;
        v_count INTEGER := cardinality(p_event_ids);
        v_base BIGINT;
        v_hash BYTEA;
        v_hashes BYTEA[] := '{}';
    BEGIN
        -- See version 1 for why the lock comes first and the time after it.
        LOCK TABLE events IN EXCLUSIVE MODE;
        o_recorded_at := clock_timestamp();

        SELECT coalesce(max(e.version), 0) INTO v_current
          FROM events e WHERE e.stream_id = p_stream_id;
        IF p_expected_version IS NOT NULL AND v_current <> p_expected_version THEN
            PERFORM 1 FROM earlier_append(p_command_id, p_event_ids) LIMIT 1;
            o_outcome := CASE WHEN FOUND THEN 5 ELSE 3 END;
            o_version := v_current;
            RETURN;
        END IF;

        -- The chain's last link, read under the lock: no append can slip in between.
        SELECT e.position, e.hash INTO v_base, v_hash
          FROM events e ORDER BY e.position DESC LIMIT 1;
        v_base := coalesce(v_base, 0);
        v_hash := coalesce(v_hash, decode(repeat('00', 32), 'hex'));
        FOR i IN 1 .. v_count LOOP
            v_hash := event_hash(v_hash, v_base + i - 1, v_base + i, p_stream_id,
                                 v_current + i, p_event_ids[i], p_types[i],
                                 p_schema_versions[i], p_payloads[i], p_metadata[i],
                                 o_recorded_at);
            v_hashes := array_append(v_hashes, v_hash);
        END LOOP;

        INSERT INTO events (position, stream_id, version, event_id, type, schema_version,
                            payload, metadata, recorded_at, hash)
        SELECT v_base + u.ord, p_stream_id, v_current + u.ord, u.event_id, u.type,
               u.schema_version, u.payload, u.metadata, o_recorded_at, u.hash
          FROM unnest(p_event_ids, p_types, p_schema_versions, p_payloads, p_metadata,
                      v_hashes)
               WITH ORDINALITY AS u(event_id, type, schema_version, payload, metadata, hash,
                                    ord)
         ORDER BY u.ord;
        o_position := v_base + 1;
        IF p_command_id IS NOT NULL THEN
            INSERT INTO commands (command_id, stream_id, first_position, last_position)
            VALUES (p_command_id, p_stream_id, o_position, v_base + v_count);
        END IF;
        o_outcome := 0;
        o_version := v_current + 1;
    END;
    $body$
"""

_SQLITE_V3: Final = (
    "ALTER TABLE events ADD COLUMN hash BLOB",
    "CREATE TABLE audit_chain (id INTEGER PRIMARY KEY, migrated_through INTEGER NOT NULL)",
)

_POSTGRES_V3: Final = (
    "ALTER TABLE events ADD COLUMN hash BYTEA",
    "CREATE TABLE audit_chain (id INTEGER PRIMARY KEY, migrated_through BIGINT NOT NULL)",
    _POSTGRES_CHAIN_FIELD,
    _POSTGRES_EVENT_HASH,
    "DROP FUNCTION append_events(TEXT, BIGINT, TEXT, TEXT[], TEXT[], INTEGER[], BYTEA[], TEXT[])",
    _POSTGRES_APPEND_FUNCTION_V3,
)

#: Rows hashed per round trip when a store that predates the chain is migrated.
_BACKFILL_BATCH: Final = 2000


async def _backfill_chain(conn: AsyncConnection) -> None:
    """Compute the chain once over every event stored before version 3, in position order.

    Runs inside the migration's transaction (the write lock is held), so no append can
    interleave. ``migrated_through`` remembers where the chain began: gaps below it were
    left by refused appends of the identity-sequence era and are not deletions.
    """
    previous_hash, previous_position = GENESIS_HASH, 0
    columns = [c for c in events.c if c.name != "hash"]
    while True:
        rows = (
            await conn.execute(
                sa.select(*columns)
                .where(events.c.position > previous_position)
                .order_by(events.c.position)
                .limit(_BACKFILL_BATCH)
            )
        ).all()
        if not rows:
            break
        updates = []
        for row in rows:
            previous_hash = event_hash(
                previous_hash,
                previous_position,
                position=row.position,
                stream_id=row.stream_id,
                version=row.version,
                event_id=row.event_id,
                type=row.type,
                schema_version=row.schema_version,
                payload=row.payload,
                metadata=row.metadata,
                recorded_at=chain_time(row.recorded_at),
            )
            previous_position = row.position
            updates.append({"at": row.position, "digest": previous_hash})
        await conn.execute(
            events.update()
            .where(events.c.position == sa.bindparam("at"))
            .values(hash=sa.bindparam("digest")),
            updates,
        )
    await conn.execute(sa.insert(audit_chain).values(id=1, migrated_through=previous_position))


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        version=1,
        description="events, commands, tracking; PostgreSQL append functions",
        statements={"sqlite": _SQLITE_V1, "postgresql": _POSTGRES_V1},
    ),
    Migration(
        version=2,
        description="snapshots of long streams (the GPU ledger); no-op command answers",
        statements={"sqlite": _SQLITE_V2, "postgresql": _POSTGRES_V2},
    ),
    Migration(
        version=3,
        description="audit hash chain over every event; gapless PostgreSQL positions",
        statements={"sqlite": _SQLITE_V3, "postgresql": _POSTGRES_V3},
        backfill=_backfill_chain,
    ),
)

#: The schema version this code reads and writes.
CURRENT_VERSION: Final = MIGRATIONS[-1].version
