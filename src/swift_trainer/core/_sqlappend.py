"""The append hot path: one driver call per append, per backend.

An append is the only operation whose latency the whole system feels (every command waits
for it), so it skips SQLAlchemy's per-statement machinery and talks to the driver:

- SQLite: the whole transaction (``BEGIN IMMEDIATE`` .. ``COMMIT``) is one Python function
  run on the store's writer thread (``_sqlitewriter``), so an append costs one thread
  handoff instead of one per statement, and the event loop keeps running during the fsync.
- PostgreSQL: one call of the ``append_events`` function (see ``_sqlschema``) in autocommit
  mode: lock, version check and insert in a single round trip.

Both detect duplicates the same way: optimistically, through the unique indexes on event id
and command id, so the common case pays no lookup; only a refused append (a conflict or a
unique violation) looks for an earlier outcome. The contract suite runs against each.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import asyncpg
import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from swift_trainer.core.audit_chain import GENESIS_HASH, event_hash
from swift_trainer.core.errors import (
    ConcurrencyConflict,
    IntegrityError,
    StoreError,
    SwiftTrainerError,
)
from swift_trainer.core.store import AppendResult, EventMetadata, NewEvent, RecordedEvent

T = TypeVar("T")

_encode_metadata: Final = msgspec.json.Encoder().encode
decode_metadata: Final = msgspec.json.Decoder(EventMetadata).decode


@dataclass(frozen=True, slots=True)
class AppendRequest:
    """An append, validated and with its metadata already encoded."""

    stream_id: str
    events: Sequence[NewEvent]
    expected_version: int | None
    command_id: str | None
    metadata_json: list[str]

    @classmethod
    def build(
        cls,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        command_id: str | None,
    ) -> AppendRequest:
        if not stream_id:
            raise IntegrityError("stream_id must not be empty")
        if expected_version is not None and expected_version < 0:
            raise IntegrityError(f"expected_version must be >= 0, got {expected_version}")
        if len({event.event_id for event in events}) != len(events):
            raise IntegrityError(
                f"a batch for stream {stream_id!r} repeats an event id; give every event its own id"
            )
        # Events usually share one metadata object (one command made them): encode it once.
        encoded: dict[int, str] = {}
        metadata_json = []
        for event in events:
            key = id(event.metadata)
            text = encoded.get(key)
            if text is None:
                text = encoded[key] = _encode_metadata(event.metadata).decode()
            metadata_json.append(text)
        return cls(stream_id, events, expected_version, command_id, metadata_json)

    @property
    def event_ids(self) -> list[str]:
        return [event.event_id for event in self.events]


def earlier_result(request: AppendRequest, existing: Sequence[RecordedEvent]) -> AppendResult:
    """Decide what events already stored under the batch's ids mean.

    The same ids in the same stream are a redelivery: answer with what was stored. Any other
    overlap means two different batches share ids, which no retry can fix.
    """
    wanted = set(request.event_ids)
    if len(existing) == len(wanted) and all(e.stream_id == request.stream_id for e in existing):
        return AppendResult(
            stream_id=request.stream_id,
            version=max(e.version for e in existing),
            events=tuple(existing),
            duplicate=True,
        )
    clashes = ", ".join(
        f"{e.event_id!r} (stream {e.stream_id!r} v{e.version})" for e in existing[:5]
    )
    raise IntegrityError(
        f"append to stream {request.stream_id!r} reuses event ids already stored: {clashes}; "
        "a retried batch must resend exactly the same events"
    )


def command_result(stream_id: str, existing: Sequence[RecordedEvent]) -> AppendResult:
    """A command seen before: its events, as stored then."""
    version = existing[-1].version if existing else 0
    return AppendResult(
        stream_id=stream_id, version=version, events=tuple(existing), duplicate=True
    )


def rejected_command_result(stream_id: str, version: int) -> AppendResult:
    """A command refused before stores nothing now either (see ``CommandLog``)."""
    return AppendResult(stream_id=stream_id, version=version, events=(), duplicate=True)


def new_events_result(
    request: AppendRequest, first_position: int, first_version: int, at: datetime
) -> AppendResult:
    """The events just stored: positions and versions of one append are contiguous."""
    stream_id = request.stream_id
    offset = first_version - first_position
    recorded = tuple(
        # Positional arguments: this runs for every event appended.
        RecordedEvent(
            position,
            stream_id,
            position + offset,
            event.event_id,
            event.type,
            event.schema_version,
            event.payload,
            event.metadata,
            at,
        )
        for position, event in enumerate(request.events, first_position)
    )
    return AppendResult(stream_id=stream_id, version=recorded[-1].version, events=recorded)


# --- SQLite -------------------------------------------------------------------------------

#: The audit chain's last link (position and hash).
_SQLITE_LAST_LINK: Final = "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
#: Changes whenever another connection commits to the file (never for this one's commits).
_SQLITE_DATA_VERSION: Final = "PRAGMA data_version"
#: Streams whose version the writer remembers; past this, the oldest half is forgotten.
_SQLITE_KNOWN_STREAMS: Final = 4096


class SqliteHead:
    """What the writer connection committed last: the chain's last link and the versions of
    the streams it appended to, so an append need not read them back.

    Valid only while no other connection has committed to the file, which ``PRAGMA
    data_version`` tells (read under the write lock, it costs no page read); any other
    commit, another process's or a Core connection's, drops everything and the next append
    reads from the table again. Appends only ever update it after a successful insert, and
    a transaction that fails after that, or any other statement run on the connection,
    calls :meth:`forget`, so what it holds is always what is committed.
    """

    __slots__ = ("_data_version", "_hash", "_position", "_streams")

    def __init__(self) -> None:
        self._data_version: int | None = None
        self._position = 0
        self._hash = GENESIS_HASH
        self._streams: dict[str, int] = {}

    def forget(self) -> None:
        self._data_version = None
        self._streams.clear()

    def last_link(self, conn: sqlite3.Connection) -> tuple[int, bytes]:
        """The chain's last (position, hash); call inside the write transaction."""
        (data_version,) = conn.execute(_SQLITE_DATA_VERSION).fetchone()
        if data_version != self._data_version:
            self._streams.clear()
            row = conn.execute(_SQLITE_LAST_LINK).fetchone()
            position, digest = row if row is not None else (0, None)
            self._position, self._hash = position or 0, digest or GENESIS_HASH
            self._data_version = data_version
        return self._position, self._hash

    def stream_version(self, conn: sqlite3.Connection, stream_id: str, expected: int | None) -> int:
        """The stream's version; only after :meth:`last_link` in the same transaction.

        A stream expected to be new and not known here is not read: 0 is returned, and the
        unique index on (stream_id, version) refuses the insert if the stream exists.
        """
        version = self._streams.get(stream_id)
        if version is None:
            if expected == 0:
                return 0
            (version,) = conn.execute(_SQLITE_STREAM_VERSION, (stream_id,)).fetchone()
        return int(version)

    def appended(self, stream_id: str, version: int, position: int, digest: bytes) -> None:
        self._position, self._hash = position, digest
        streams = self._streams
        if len(streams) >= _SQLITE_KNOWN_STREAMS and stream_id not in streams:
            for stale in list(streams)[: _SQLITE_KNOWN_STREAMS // 2]:
                del streams[stale]
        streams[stream_id] = version


#: Rows per INSERT statement; 6 parameters a row stays far below SQLite's 32766.
_SQLITE_ROWS_PER_INSERT: Final = 500


@functools.lru_cache(maxsize=64)
def _sqlite_insert_events(rows: int) -> str:
    """One multi-row INSERT for ``rows`` events (cheaper than executemany per row).

    ?1 first position, ?2 stream, ?3 first version, ?4 timestamp are shared by the rows;
    each row adds its own event id, type, schema version, payload, metadata and hash.
    """
    values = ",".join(
        f"(?1+{i},?2,?3+{i},?{5 + 6 * i},?{6 + 6 * i},?{7 + 6 * i},?{8 + 6 * i},?{9 + 6 * i},"
        f"?4,?{10 + 6 * i})"
        for i in range(rows)
    )
    return (
        "INSERT INTO events (position, stream_id, version, event_id, type, schema_version,"
        f" payload, metadata, recorded_at, hash) VALUES {values}"
    )


_SQLITE_INSERT_COMMAND: Final = (
    "INSERT INTO commands (command_id, stream_id, first_position, last_position)"
    " VALUES (?, ?, ?, ?)"
)
_SQLITE_COLUMNS: Final = (
    "position, stream_id, version, event_id, type, schema_version, payload, metadata, recorded_at"
)
_SQLITE_COMMAND: Final = (
    "SELECT stream_id, first_position, last_position, error_code FROM commands WHERE command_id = ?"
)
_SQLITE_STREAM_VERSION: Final = "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = ?"
_SQLITE_COMMAND_EVENTS: Final = (
    f"SELECT {_SQLITE_COLUMNS} FROM events"
    " WHERE position BETWEEN ? AND ? AND stream_id = ? ORDER BY position"
)
#: Stay well under SQLite's bound-parameter limit when looking up a large batch's ids.
_SQLITE_ID_CHUNK: Final = 500


def _sqlite_event(row: tuple[Any, ...]) -> RecordedEvent:
    return RecordedEvent(
        position=row[0],
        stream_id=row[1],
        version=row[2],
        event_id=row[3],
        type=row[4],
        schema_version=row[5],
        payload=row[6],
        metadata=decode_metadata(row[7]),
        recorded_at=datetime.fromisoformat(row[8]).replace(tzinfo=UTC),
    )


def _sqlite_earlier(conn: sqlite3.Connection, request: AppendRequest) -> AppendResult | None:
    """The earlier outcome of this command or these events, if they were stored before."""
    if request.command_id is not None:
        command = conn.execute(_SQLITE_COMMAND, (request.command_id,)).fetchone()
        if command is not None:
            stream_id, first, last, error_code = command
            if error_code is not None:
                (version,) = conn.execute(_SQLITE_STREAM_VERSION, (stream_id,)).fetchone()
                return rejected_command_result(stream_id, version)
            rows = conn.execute(_SQLITE_COMMAND_EVENTS, (first, last, stream_id))
            return command_result(stream_id, [_sqlite_event(row) for row in rows])
    ids = request.event_ids
    found: list[RecordedEvent] = []
    for start in range(0, len(ids), _SQLITE_ID_CHUNK):
        chunk = ids[start : start + _SQLITE_ID_CHUNK]
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT {_SQLITE_COLUMNS} FROM events WHERE event_id IN ({marks})"
        found.extend(_sqlite_event(row) for row in conn.execute(sql, chunk))
    if not found:
        return None
    found.sort(key=lambda e: e.position)
    return earlier_result(request, found)


def _sqlite_refusal(
    conn: sqlite3.Connection, request: AppendRequest, exc: sqlite3.IntegrityError
) -> AppendResult:
    """A unique index refused the insert: a redelivery (answer it), a stream that moved
    (a conflict: an append expecting a new stream does not read the version first, the
    index on (stream_id, version) is its check), or a clash no retry can fix."""
    earlier = _sqlite_earlier(conn, request)
    if earlier is not None:
        return earlier
    expected = request.expected_version
    if expected is not None:
        (current,) = conn.execute(_SQLITE_STREAM_VERSION, (request.stream_id,)).fetchone()
        if current != expected:
            raise ConcurrencyConflict(request.stream_id, expected, current)
    raise IntegrityError(f"append to stream {request.stream_id!r} refused: {exc}") from exc


def sqlite_append(
    conn: sqlite3.Connection, request: AppendRequest, head: SqliteHead | None = None
) -> AppendResult:
    """Append in one transaction; runs on the thread that owns ``conn``.

    ``BEGIN IMMEDIATE`` takes the database's single write lock before anything is read, so
    the version check and the positions cannot go stale, and a second writer waits (up to
    ``busy_timeout``) instead of failing later on a read-to-write lock upgrade. Duplicates
    are detected optimistically by the unique indexes, so the common case costs no extra
    query; the rare conflict or duplicate path rolls back and looks up the earlier outcome.
    ``head`` is the writer's memory of what it committed last (a fresh one reads it all).
    """
    head = head if head is not None else SqliteHead()
    conn.execute("BEGIN IMMEDIATE")
    try:
        outcome = _sqlite_insert(conn, request, head)
        if isinstance(outcome, AppendResult):
            conn.commit()
            return outcome
    except sqlite3.IntegrityError as exc:
        head.forget()
        conn.rollback()
        return _sqlite_refusal(conn, request, exc)
    except BaseException:
        head.forget()
        if conn.in_transaction:
            conn.rollback()
        raise
    conn.rollback()
    earlier = _sqlite_earlier(conn, request)
    if earlier is None:
        assert request.expected_version is not None
        raise ConcurrencyConflict(request.stream_id, request.expected_version, outcome)
    return earlier


def _sqlite_insert(
    conn: sqlite3.Connection, request: AppendRequest, head: SqliteHead
) -> AppendResult | int:
    """Inside ``BEGIN IMMEDIATE``: insert (the caller commits), or return the stream's
    version when ``expected_version`` does not match it."""
    stream_id = request.stream_id
    last_position, link = head.last_link(conn)
    expected = request.expected_version
    current = head.stream_version(conn, stream_id, expected)
    if expected is not None and current != expected:
        return current
    first_position = last_position + 1
    at = datetime.now(UTC)
    # SQLAlchemy's text layout for SQLite DATETIME, so Core reads parse what is written here;
    # the chain's layout (``chain_time``) differs only in the "T" (one format, not two).
    stamp = at.replace(tzinfo=None).isoformat(" ", "microseconds")
    chained_at = stamp.replace(" ", "T", 1)
    events = request.events
    metadata = request.metadata_json
    for start in range(0, len(events), _SQLITE_ROWS_PER_INSERT):
        chunk = range(start, min(start + _SQLITE_ROWS_PER_INSERT, len(events)))
        params: list[object] = [first_position + start, stream_id, current + 1 + start, stamp]
        for index in chunk:
            event = events[index]
            position = first_position + index
            link = event_hash(
                link,
                position - 1,
                position=position,
                stream_id=stream_id,
                version=current + 1 + index,
                event_id=event.event_id,
                type=event.type,
                schema_version=event.schema_version,
                payload=event.payload,
                metadata=metadata[index],
                recorded_at=chained_at,
            )
            params += (
                event.event_id,
                event.type,
                event.schema_version,
                event.payload,
                metadata[index],
                link,
            )
        conn.execute(_sqlite_insert_events(len(chunk)), params)
    last = first_position + len(events) - 1
    if request.command_id is not None:
        conn.execute(_SQLITE_INSERT_COMMAND, (request.command_id, stream_id, first_position, last))
    head.appended(stream_id, current + len(events), last, link)
    # The stored text has microsecond precision, as ``at`` has: reads return equal values.
    return new_events_result(request, first_position, current + 1, at)


def sqlite_append_group(
    conn: sqlite3.Connection,
    requests: Sequence[AppendRequest],
    head: SqliteHead | None = None,
) -> list[AppendResult | SwiftTrainerError]:
    """Append several independent requests in ONE transaction (group commit).

    With ``synchronous=FULL`` every commit is an fsync, and SQLite has one writer: appends
    that queue up while a commit is in flight would each pay a whole fsync. Committing them
    together costs one. Each request runs inside its own SAVEPOINT, so a conflict or a
    duplicate undoes only that request and gets its own answer, exactly as if it had been
    appended alone; requests for the same stream see each other in order.
    """
    head = head if head is not None else SqliteHead()
    outcomes: list[AppendResult | SwiftTrainerError] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for request in requests:
            conn.execute("SAVEPOINT one_append")
            refused: sqlite3.IntegrityError | None = None
            try:
                outcome = _sqlite_insert(conn, request, head)
            except sqlite3.IntegrityError as exc:
                outcome, refused = -1, exc
            if isinstance(outcome, AppendResult):
                conn.execute("RELEASE one_append")
                outcomes.append(outcome)
                continue
            conn.execute("ROLLBACK TO one_append")
            conn.execute("RELEASE one_append")
            try:
                if refused is not None:
                    outcomes.append(_sqlite_refusal(conn, request, refused))
                    continue
                earlier = _sqlite_earlier(conn, request)
            except SwiftTrainerError as failure:
                outcomes.append(failure)
                continue
            if earlier is not None:
                outcomes.append(earlier)
            else:
                assert request.expected_version is not None
                outcomes.append(
                    ConcurrencyConflict(request.stream_id, request.expected_version, outcome),
                )
        conn.commit()
    except BaseException:
        head.forget()
        if conn.in_transaction:
            conn.rollback()
        raise
    return outcomes


# --- PostgreSQL ---------------------------------------------------------------------------

_POSTGRES_CALL: Final = "SELECT * FROM append_events($1, $2, $3, $4, $5, $6, $7, $8)"
_POSTGRES_EARLIER: Final = "SELECT * FROM earlier_append($1, $2)"

_APPENDED: Final = 0
_SEEN_COMMAND: Final = 1
_SEEN_EVENTS: Final = 2
_CONFLICT: Final = 3
_REJECTED_COMMAND: Final = 4
#: A conflict whose command or events were stored before: ask ``earlier_append``.
_CONFLICT_SEEN_BEFORE: Final = 5


def event_from_row(row: Sequence[Any] | asyncpg.Record, first: int = 0) -> RecordedEvent:
    """An event from a row (asyncpg's or SQLAlchemy's) whose event columns start at index
    ``first``, in the events table's order (position ... recorded_at)."""
    return RecordedEvent(
        position=row[first],
        stream_id=row[first + 1],
        version=row[first + 2],
        event_id=row[first + 3],
        type=row[first + 4],
        schema_version=row[first + 5],
        payload=row[first + 6],
        metadata=decode_metadata(row[first + 7]),
        recorded_at=row[first + 8],
    )


def _postgres_earlier(request: AppendRequest, rows: Sequence[asyncpg.Record]) -> AppendResult:
    """Interpret the rows of ``earlier_append``; no rows means nothing was stored before."""
    if not rows:
        raise IntegrityError(
            f"append to stream {request.stream_id!r} refused by a unique index, yet no "
            "earlier command or event matches it"
        )
    outcome = rows[0][0]
    if outcome == _REJECTED_COMMAND:
        return rejected_command_result(rows[0][2], rows[0][3])
    if outcome == _SEEN_COMMAND:
        return command_result(rows[0][2], [event_from_row(r, first=1) for r in rows])
    assert outcome == _SEEN_EVENTS, outcome
    return earlier_result(request, [event_from_row(r, first=1) for r in rows])


async def postgres_append(
    conn: asyncpg.Connection[asyncpg.Record], request: AppendRequest
) -> AppendResult:
    """Append with one round trip; the connection must not be inside a transaction.

    Outside a transaction the call is its own transaction, so the table lock the function
    takes is released by the commit that follows it, with no extra BEGIN/COMMIT trips.
    A unique violation (a redelivered event or command id, or a command a concurrent
    ``record_rejection`` just claimed) has rolled everything back; a second call then
    fetches the earlier outcome, which is committed and immutable by then.
    """
    events = request.events
    try:
        row = await conn.fetchrow(
            _POSTGRES_CALL,
            request.stream_id,
            request.expected_version,
            request.command_id,
            [e.event_id for e in events],
            [e.type for e in events],
            [e.schema_version for e in events],
            [e.payload for e in events],
            request.metadata_json,
        )
    except asyncpg.UniqueViolationError:
        row = None
    if row is not None:
        outcome, first_position, version, recorded_at = row
        if outcome == _APPENDED:
            return new_events_result(request, first_position, version, recorded_at)
        if outcome == _CONFLICT:
            assert request.expected_version is not None
            raise ConcurrencyConflict(request.stream_id, request.expected_version, version)
        assert outcome == _CONFLICT_SEEN_BEFORE, outcome
    earlier = await conn.fetch(_POSTGRES_EARLIER, request.command_id, request.event_ids)
    return _postgres_earlier(request, earlier)


class HeldConnections:
    """Pool connections held checked out for appends, lending out their driver connection.

    A SQLAlchemy checkout and return (with its reset) costs more than an append's own
    Python work, so appends reuse up to ``limit`` connections held for the store's
    lifetime. With ``limit=1`` this is also SQLite's in-process writer queue: writers wait
    here, in order, rather than in SQLite's busy handler, which sleeps in steps of
    milliseconds. A connection whose call failed with anything but ``keep_on`` (a lost
    connection, a cancelled call) is in an unknown state and is invalidated, not reused.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        limit: int,
        keep_on: tuple[type[BaseException], ...],
    ) -> None:
        self._engine = engine
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[tuple[AsyncConnection, Any]] = []
        self._keep_on = keep_on
        self._closed = False

    async def run(self, call: Callable[[Any], Awaitable[T]]) -> T:
        async with self._slots:
            if self._closed:
                raise StoreError("the event store is closed", code="store_closed")
            held = self._idle.pop() if self._idle else await self._open()
            try:
                result = await call(held[1])
            except self._keep_on:
                await self._release(held)
                raise
            except BaseException:
                await _discard(held[0])
                raise
            await self._release(held)
            return result

    async def _open(self) -> tuple[AsyncConnection, Any]:
        conn = await self._engine.connect()
        try:
            raw = await conn.get_raw_connection()
        except BaseException:
            await conn.close()
            raise
        return conn, raw.driver_connection

    async def _release(self, held: tuple[AsyncConnection, Any]) -> None:
        if self._closed:
            await held[0].close()
        else:
            self._idle.append(held)

    async def close(self) -> None:
        """Return the idle connections to the pool; busy ones follow when their call ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await conn.close()


async def _discard(conn: AsyncConnection) -> None:
    try:
        await conn.invalidate()
    finally:
        await conn.close()
