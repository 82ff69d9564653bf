"""The SQL event store: SQLite for one machine, PostgreSQL at scale, one code path.

SQLAlchemy Core (async engine, pool, dialect types) does setup, migrations and reads; the
append hot path talks to the driver in one call per append (see ``_sqlappend``), because
appends are what every command waits for. Why a reader of ``read_all`` never skips an
event, what an acknowledged append survives, and how a redelivered append is answered:
``docs/architecture.md``, "The SQL event store". Callers see only the ``errors``
hierarchy, never a driver exception (``_sqlerrors``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Final, Literal, cast

import asyncpg
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.compiler import SQLCompiler

from swift_trainer.core import _sqlschema as schema
from swift_trainer.core._sqlappend import (
    AppendRequest,
    HeldConnections,
    event_from_row,
    postgres_append,
)
from swift_trainer.core._sqlerrors import store_errors
from swift_trainer.core._sqlitewriter import SqliteWriter
from swift_trainer.core.errors import (
    ConcurrencyConflict,
    IntegrityError,
    SchemaVersionError,
    StoreError,
    SwiftTrainerError,
)
from swift_trainer.core.store import (
    AppendResult,
    CommandRecord,
    NewEvent,
    RecordedEvent,
    Snapshot,
)

__all__ = ["SqlEventStore", "open_event_store"]

SqliteSynchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
_Row = sa.Row[*tuple[Any, ...]]

_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

_EVENT_COLUMNS: Final = (
    schema.events.c.position,
    schema.events.c.stream_id,
    schema.events.c.version,
    schema.events.c.event_id,
    schema.events.c.type,
    schema.events.c.schema_version,
    schema.events.c.payload,
    schema.events.c.metadata,
    schema.events.c.recorded_at,
)
_READ_STREAM: Final = (
    sa.select(*_EVENT_COLUMNS)
    .where(
        schema.events.c.stream_id == sa.bindparam("stream_id"),
        schema.events.c.version > sa.bindparam("after"),
    )
    .order_by(schema.events.c.version)
)
_READ_ALL: Final = (
    sa.select(*_EVENT_COLUMNS)
    .where(schema.events.c.position > sa.bindparam("after"))
    .order_by(schema.events.c.position)
    .limit(sa.bindparam("limit"))
)
_READ_TYPES: Final = (
    sa.select(*_EVENT_COLUMNS)
    .where(
        schema.events.c.position > sa.bindparam("after"),
        schema.events.c.type.in_(sa.bindparam("types", expanding=True)),
    )
    .order_by(schema.events.c.position)
    .limit(sa.bindparam("limit"))
)
#: ``read_all`` on PostgreSQL, straight to asyncpg (tables found through ``search_path``).
_PG_READ_ALL: Final = (
    "SELECT position, stream_id, version, event_id, type, schema_version, payload, metadata,"
    " recorded_at FROM events WHERE position > $1 ORDER BY position LIMIT $2"
)
_STREAM_VERSION: Final = sa.select(sa.func.coalesce(sa.func.max(schema.events.c.version), 0)).where(
    schema.events.c.stream_id == sa.bindparam("stream_id")
)
_LAST_POSITION: Final = sa.select(sa.func.coalesce(sa.func.max(schema.events.c.position), 0))
_GET_TRACKING: Final = sa.select(schema.tracking.c.position).where(
    schema.tracking.c.name == sa.bindparam("name")
)
_LOAD_SNAPSHOT: Final = sa.select(schema.snapshots.c.version, schema.snapshots.c.payload).where(
    schema.snapshots.c.stream_id == sa.bindparam("stream_id")
)
_SCHEMA_VERSION: Final = sa.select(sa.func.max(schema.schema_version.c.version))
_FIND_COMMAND: Final = (
    sa.select(
        schema.commands.c.stream_id,
        schema.commands.c.error_code,
        schema.commands.c.error_message,
        *_EVENT_COLUMNS,
    )
    .select_from(
        schema.commands.outerjoin(
            schema.events,
            sa.and_(
                schema.events.c.position.between(
                    schema.commands.c.first_position, schema.commands.c.last_position
                ),
                schema.events.c.stream_id == schema.commands.c.stream_id,
            ),
        )
    )
    .where(schema.commands.c.command_id == sa.bindparam("command_id"))
    .order_by(schema.events.c.position)
)


def _record_rejection_statement(dialect: str) -> sa.Executable:
    """Insert-if-absent: an id already accepted or refused keeps its first outcome."""
    insert = sqlite_dialect.insert if dialect == "sqlite" else pg_dialect.insert
    return (
        insert(schema.commands)
        .values(
            command_id=sa.bindparam("command_id"),
            stream_id=sa.bindparam("stream_id"),
            error_code=sa.bindparam("code"),
            error_message=sa.bindparam("message"),
        )
        .on_conflict_do_nothing(index_elements=[schema.commands.c.command_id])
    )


def _set_tracking_statement(dialect: str) -> sa.Executable:
    """Upsert that never moves a follower backwards (a late, stale write is a no-op)."""
    insert = sqlite_dialect.insert if dialect == "sqlite" else pg_dialect.insert
    stmt = insert(schema.tracking).values(
        name=sa.bindparam("name"), position=sa.bindparam("position")
    )
    return stmt.on_conflict_do_update(
        index_elements=[schema.tracking.c.name],
        set_={"position": stmt.excluded.position},
        where=schema.tracking.c.position < stmt.excluded.position,
    )


def _save_snapshot_statement(dialect: str) -> sa.Executable:
    """Upsert that keeps the newest snapshot: a slower writer's older one changes nothing."""
    insert = sqlite_dialect.insert if dialect == "sqlite" else pg_dialect.insert
    stmt = insert(schema.snapshots).values(
        stream_id=sa.bindparam("stream_id"),
        version=sa.bindparam("version"),
        payload=sa.bindparam("payload"),
    )
    return stmt.on_conflict_do_update(
        index_elements=[schema.snapshots.c.stream_id],
        set_={"version": stmt.excluded.version, "payload": stmt.excluded.payload},
        where=schema.snapshots.c.version < stmt.excluded.version,
    )


def _sqlite_positional(statement: sa.Executable) -> tuple[str, tuple[str, ...]]:
    """A Core statement as SQLite text and its parameter names in order, for the writer
    thread's plain ``sqlite3`` connection (one statement text, both code paths)."""
    compiled = cast(sa.ClauseElement, statement).compile(dialect=sqlite_dialect.dialect())
    assert isinstance(compiled, SQLCompiler)
    return str(compiled), tuple(compiled.positiontup or ())


class SqlEventStore:
    """An :class:`~swift_trainer.core.store.EventStore` on SQLite or PostgreSQL.

    Create one with :func:`open_event_store`. Several instances (in one process or many) may
    share one database; they coordinate through the database's locks only.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        schema_name: str | None = None,
        append_connections: int = 4,
        sqlite_writer: SqliteWriter | None = None,
    ) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        if self._dialect not in ("sqlite", "postgresql"):
            raise StoreError(f"unsupported dialect {self._dialect!r}", code="store_url_invalid")
        self._schema_name = schema_name
        # Single-statement reads need no transaction; on PostgreSQL that saves BEGIN and
        # ROLLBACK round trips. SQLite's driver never opens one for a SELECT anyway.
        self._reader = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if self._dialect == "postgresql"
            else engine
        )
        self._set_tracking = _set_tracking_statement(self._dialect)
        self._record_rejection = _record_rejection_statement(self._dialect)
        self._save_snapshot = _save_snapshot_statement(self._dialect)
        # SQLite has one writer at a time: appends and the other writes (tracking,
        # snapshots, refusals) all go to one writer thread (see ``_sqlitewriter``), so this
        # process's writers never meet in SQLite's busy handler.
        if self._dialect == "sqlite" and sqlite_writer is None:
            raise StoreError(
                "a SQLite event store needs its writer; open it with open_event_store()",
                code="store_url_invalid",
            )
        self._sqlite_writer = sqlite_writer
        self._sqlite_statements = {
            statement: _sqlite_positional(statement)
            for statement in (self._set_tracking, self._record_rejection, self._save_snapshot)
            if self._dialect == "sqlite"
        }
        self._appenders = HeldConnections(
            engine,
            limit=append_connections,
            keep_on=(asyncpg.PostgresError, SwiftTrainerError),
        )
        self._closed = False

    @property
    def dialect(self) -> str:
        return self._dialect

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def sqlite_writer(self) -> SqliteWriter | None:
        """SQLite's writer thread (None on PostgreSQL), for probes of its connection."""
        return self._sqlite_writer

    # --- lifecycle ------------------------------------------------------------------------

    async def setup(self) -> None:
        """Apply the missing numbered migration steps, all in one transaction.

        Safe to call from several processes at once: the first takes a lock (SQLite's write
        lock, a PostgreSQL advisory lock per schema), the others wait and then find nothing
        left to do. A database newer than this code is refused rather than misread.
        """
        with store_errors("event store setup"):
            async with self._write_transaction() as conn:
                if self._dialect == "postgresql":
                    await conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:key)"),
                        {"key": self._setup_lock_key()},
                    )
                    if self._schema_name is not None:
                        await conn.exec_driver_sql(
                            f'CREATE SCHEMA IF NOT EXISTS "{self._schema_name}"'
                        )
                await conn.exec_driver_sql(schema.SCHEMA_VERSION_DDL[self._dialect])
                current = (await conn.execute(_SCHEMA_VERSION)).scalar() or 0
                if current > schema.CURRENT_VERSION:
                    raise SchemaVersionError(
                        f"the event store database is at schema version {current}, but this "
                        f"code knows versions up to {schema.CURRENT_VERSION}; upgrade "
                        "swift-trainer before using this database"
                    )
                for migration in schema.MIGRATIONS:
                    if migration.version <= current:
                        continue
                    for statement in migration.statements[self._dialect]:
                        await conn.exec_driver_sql(statement)
                    if migration.backfill is not None:
                        await migration.backfill(conn)
                    await conn.execute(
                        sa.insert(schema.schema_version).values(
                            version=migration.version,
                            description=migration.description,
                            applied_at=datetime.now(UTC),
                        )
                    )
                await conn.commit()

    def _setup_lock_key(self) -> int:
        name = f"swift_trainer.event_store:{self._schema_name or ''}".encode()
        return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "big", signed=True)

    async def close(self) -> None:
        """Release the writer connection and dispose of the engine (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._sqlite_writer is not None:
            await self._sqlite_writer.close()
        await self._appenders.close()
        await self._engine.dispose()

    @asynccontextmanager
    async def _write_transaction(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection in a write transaction (``BEGIN IMMEDIATE`` on SQLite)."""
        async with self._engine.connect() as conn:
            if self._dialect == "sqlite":
                # The sqlite3 driver only begins implicitly before DML; begin explicitly so
                # the write lock is ours before the first read.
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn

    # --- writes ---------------------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: int | None,
        command_id: str | None = None,
    ) -> AppendResult:
        """Append atomically; see :class:`~swift_trainer.core.store.EventStore`."""
        request = AppendRequest.build(stream_id, events, expected_version, command_id)
        if not events:
            version = await self.stream_version(stream_id)
            if expected_version is not None and version != expected_version:
                raise ConcurrencyConflict(stream_id, expected_version, version)
            return AppendResult(stream_id=stream_id, version=version, events=())
        with store_errors(f"append to stream {stream_id!r}"):
            if self._closed:
                raise StoreError("the event store is closed", code="store_closed")
            if self._dialect == "sqlite":
                return await self._sqlite_append(request)
            return await self._postgres_append(request)

    async def _sqlite_append(self, request: AppendRequest) -> AppendResult:
        """On the writer thread; appends queued together commit together (group commit)."""
        assert self._sqlite_writer is not None
        return await self._sqlite_writer.append(request)

    async def _postgres_append(self, request: AppendRequest) -> AppendResult:
        async def call(driver: asyncpg.Connection[asyncpg.Record]) -> AppendResult:
            return await postgres_append(driver, request)

        return await self._appenders.run(call)

    async def set_tracking(self, name: str, position: int) -> None:
        """Record a follower's position; a smaller position than the stored one is ignored."""
        if position < 0:
            raise IntegrityError(f"tracking position must be >= 0, got {position}")
        with store_errors(f"set tracking {name!r}"):
            await self._write(self._set_tracking, name=name, position=position)

    async def _write(self, statement: sa.Executable, **params: Any) -> None:
        """One statement in its own transaction (behind the writer queue on SQLite)."""
        if self._sqlite_writer is not None:
            sql, names = self._sqlite_statements[statement]
            await self._sqlite_writer.execute(sql, [params[name] for name in names])
        else:
            async with self._reader.connect() as conn:
                await conn.execute(statement, params)

    # --- snapshots ------------------------------------------------------------------------

    async def save_snapshot(self, stream_id: str, version: int, payload: bytes) -> None:
        """Keep ``payload`` as the state of ``stream_id`` at ``version``, unless a newer
        snapshot is stored already."""
        if version < 1:
            raise IntegrityError(f"snapshot version must be >= 1, got {version}")
        with store_errors(f"save snapshot of {stream_id!r}"):
            await self._write(
                self._save_snapshot, stream_id=stream_id, version=version, payload=payload
            )

    async def load_snapshot(self, stream_id: str) -> Snapshot | None:
        rows = await self._fetch(
            f"load snapshot of {stream_id!r}", _LOAD_SNAPSHOT, stream_id=stream_id
        )
        if not rows:
            return None
        return Snapshot(stream_id=stream_id, version=int(rows[0][0]), payload=bytes(rows[0][1]))

    # --- command log ----------------------------------------------------------------------

    async def find_command(self, command_id: str) -> CommandRecord | None:
        """What became of ``command_id``: the events it stored, or the refusal recorded."""
        rows = await self._fetch(
            f"find command {command_id!r}", _FIND_COMMAND, command_id=command_id
        )
        if not rows:
            return None
        stream_id, error_code, error_message = rows[0][0], rows[0][1], rows[0][2]
        with store_errors(f"find command {command_id!r}"):
            events = tuple(event_from_row(row, 3) for row in rows if row[3] is not None)
        return CommandRecord(
            command_id=command_id,
            stream_id=stream_id,
            events=events,
            error_code=error_code,
            error_message=error_message,
        )

    async def record_rejection(
        self, command_id: str, stream_id: str, code: str, message: str
    ) -> CommandRecord:
        """Remember that ``command_id`` was refused, unless its outcome is already known.

        Returns what is stored for the id afterwards, so a caller racing an append of the
        same command learns which outcome won.
        """
        return await self._record_outcome(command_id, stream_id, code, message)

    async def record_noop(self, command_id: str, stream_id: str) -> CommandRecord:
        """Remember that ``command_id`` was accepted with nothing to store, unless its
        outcome is already known; returns what is stored for the id afterwards."""
        return await self._record_outcome(command_id, stream_id, None, None)

    async def _record_outcome(
        self, command_id: str, stream_id: str, code: str | None, message: str | None
    ) -> CommandRecord:
        """Insert-if-absent into the command log: an error (refused) or none (no-op)."""
        with store_errors(f"record the outcome of command {command_id!r}"):
            await self._write(
                self._record_rejection,
                command_id=command_id,
                stream_id=stream_id,
                code=code,
                message=message,
            )
        record = await self.find_command(command_id)
        if record is None:
            raise StoreError(f"command {command_id!r} vanished after it was recorded")
        return record

    # --- reads ----------------------------------------------------------------------------

    async def _fetch(self, action: str, statement: sa.Executable, **params: Any) -> Sequence[_Row]:
        with store_errors(action):
            async with self._reader.connect() as conn:
                result = await conn.execute(statement, params)
                return result.all()

    async def _fetch_events(
        self, action: str, statement: sa.Executable, **params: Any
    ) -> list[RecordedEvent]:
        rows = await self._fetch(action, statement, **params)
        with store_errors(action):
            return [event_from_row(row) for row in rows]

    async def read_stream(self, stream_id: str, *, after_version: int = 0) -> list[RecordedEvent]:
        return await self._fetch_events(
            f"read stream {stream_id!r}", _READ_STREAM, stream_id=stream_id, after=after_version
        )

    async def read_all(
        self,
        *,
        after_position: int = 0,
        limit: int = 1000,
        types: Collection[str] | None = None,
    ) -> list[RecordedEvent]:
        if limit <= 0:
            return []
        if types is not None:
            return await self._fetch_events(
                "read the event log",
                _READ_TYPES,
                after=after_position,
                limit=limit,
                types=sorted(types),
            )
        if self._dialect == "postgresql":
            return await self._read_all_postgres(after_position, limit)
        return await self._fetch_events(
            "read the event log", _READ_ALL, after=after_position, limit=limit
        )

    async def _read_all_postgres(self, after_position: int, limit: int) -> list[RecordedEvent]:
        """Through the driver, past SQLAlchemy's row processing: replays and rebuilds read
        the whole log this way, and that processing was a third of a rebuild's time."""
        with store_errors("read the event log"):
            async with self._reader.connect() as conn:
                raw = await conn.get_raw_connection()
                driver = cast("asyncpg.Connection[asyncpg.Record]", raw.driver_connection)
                rows = await driver.fetch(_PG_READ_ALL, after_position, limit)
            return [event_from_row(row) for row in rows]

    async def stream_version(self, stream_id: str) -> int:
        rows = await self._fetch(
            f"read version of stream {stream_id!r}", _STREAM_VERSION, stream_id=stream_id
        )
        return int(rows[0][0])

    async def last_position(self) -> int:
        rows = await self._fetch("read the last position", _LAST_POSITION)
        return int(rows[0][0])

    async def get_tracking(self, name: str) -> int:
        rows = await self._fetch(f"read tracking {name!r}", _GET_TRACKING, name=name)
        return int(rows[0][0]) if rows else 0

    async def schema_version(self) -> int:
        """The schema version recorded in the database (0 before setup)."""
        try:
            rows = await self._fetch("read the schema version", _SCHEMA_VERSION)
        except StoreError:
            return 0
        return int(rows[0][0] or 0)


def open_event_store(
    url: str,
    *,
    schema_name: str | None = None,
    sqlite_synchronous: SqliteSynchronous = "FULL",
    sqlite_busy_timeout: float = 30.0,
    pool_size: int = 5,
    append_connections: int = 4,
) -> SqlEventStore:
    """Open (not set up) an event store.

    ``url`` is ``sqlite+aiosqlite:///path.db`` (``sqlite:///path.db`` means the same) or
    ``postgresql+asyncpg://user@host/db`` (``postgresql://`` and ``postgres://`` too).
    ``schema_name`` puts PostgreSQL's tables in their own schema (created by ``setup()``),
    so several stores can share one database. ``pool_size`` connections serve reads; appends
    hold their own on top (one on SQLite, the single writer; ``append_connections`` on
    PostgreSQL, where they overlap their round trips while the table lock orders them).
    Call ``setup()`` before first use.
    """
    try:
        parsed = sa.make_url(url)
    except sa_exc.ArgumentError as exc:
        raise StoreError(
            f"invalid event store URL {url!r}: {exc}", code="store_url_invalid"
        ) from exc
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "aiosqlite", "pysqlite"):
        return _open_sqlite(parsed, sqlite_synchronous, sqlite_busy_timeout, pool_size)
    if backend in ("postgresql", "postgres") and driver in ("", "asyncpg"):
        return _open_postgres(parsed, schema_name, pool_size, append_connections)
    raise StoreError(
        f"unsupported event store URL scheme {parsed.drivername!r}; use "
        "sqlite+aiosqlite:///path.db or postgresql+asyncpg://user@host/db",
        code="store_url_invalid",
    )


def _open_sqlite(
    url: sa.URL, synchronous: SqliteSynchronous, busy_timeout: float, pool_size: int
) -> SqlEventStore:
    database = url.database or ""
    if database in ("", ":memory:") or "mode=memory" in str(url):
        raise StoreError(
            "in-memory SQLite cannot hold an event store: every pooled connection would see "
            "its own empty database; use a file, e.g. sqlite+aiosqlite:///events.db",
            code="store_url_invalid",
        )
    if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise StoreError(f"invalid sqlite_synchronous {synchronous!r}", code="store_url_invalid")
    engine = create_async_engine(
        url.set(drivername="sqlite+aiosqlite"),
        connect_args={"timeout": busy_timeout},
        pool_size=pool_size + 1,
    )
    timeout_ms = int(busy_timeout * 1000)

    def configure(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {timeout_ms}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
        finally:
            cursor.close()

    sa_event.listen(engine.sync_engine, "connect", configure)
    writer = SqliteWriter(database, synchronous=synchronous, busy_timeout=busy_timeout)
    return SqlEventStore(engine, sqlite_writer=writer)


def _open_postgres(
    url: sa.URL, schema_name: str | None, pool_size: int, append_connections: int
) -> SqlEventStore:
    connect_args: dict[str, Any] = {}
    if schema_name is not None:
        if not _IDENTIFIER.fullmatch(schema_name):
            raise StoreError(
                f"invalid PostgreSQL schema name {schema_name!r}: use letters, digits and _",
                code="store_url_invalid",
            )
        connect_args["server_settings"] = {"search_path": schema_name}
    engine = create_async_engine(
        url.set(drivername="postgresql+asyncpg"),
        connect_args=connect_args,
        pool_size=pool_size + append_connections,
    )
    return SqlEventStore(engine, schema_name=schema_name, append_connections=append_connections)
