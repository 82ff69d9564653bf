"""The event store contract: the only source of truth in the system.

The store knows streams, versions, positions and opaque payloads; it knows nothing about
jobs. Everything else (queue, assignments, read models) is derived by replaying it.

Versions: a stream's first event has version 1; a stream that does not exist is at
version 0, so ``expected_version=NO_STREAM`` means "create". Positions: every stored event
gets a global position that grows with commit order, so a reader that remembers the last
position it saw never skips an event and never sees one twice.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Final, Protocol, runtime_checkable

import msgspec

#: ``expected_version`` for "the stream must not exist yet".
NO_STREAM: Final = 0


class EventMetadata(msgspec.Struct, frozen=True, omit_defaults=True):
    """Why an event exists and how to follow it: command, correlation, causation, trace."""

    command_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    #: W3C trace context carrier (``traceparent``, ``tracestate``).
    trace: dict[str, str] = {}
    #: Who asked: an API principal, a runner id, ``scheduler``.
    actor: str | None = None


class NewEvent(msgspec.Struct, frozen=True):
    """An event about to be appended; its id makes the append idempotent."""

    event_id: str
    type: str
    payload: bytes
    schema_version: int = 1
    metadata: EventMetadata = EventMetadata()


class EventPlace(msgspec.Struct, frozen=True):
    """Where an event stands and what it is: the fields every stored-event shape starts with.

    Its subclasses are the stored event here, the envelope on NATS (``bus.messages``) and
    the audit chain's row (``core.audit_chain``); each adds its own form of the rest.
    """

    position: int
    stream_id: str
    version: int
    event_id: str
    type: str
    schema_version: int


class RecordedEvent(EventPlace, frozen=True):
    """An event as stored, with its place in its stream and in the global log."""

    payload: bytes
    metadata: EventMetadata
    recorded_at: datetime


class AppendResult(msgspec.Struct, frozen=True):
    """Outcome of one append; ``duplicate`` says the events (or command) were stored before."""

    stream_id: str
    version: int
    events: tuple[RecordedEvent, ...]
    duplicate: bool = False

    @property
    def last_position(self) -> int:
        return self.events[-1].position if self.events else 0


@runtime_checkable
class EventStore(Protocol):
    """What the rest of the system may ask of an event store."""

    async def setup(self) -> None:
        """Create or upgrade the schema to the version this code expects (idempotent)."""

    async def close(self) -> None: ...

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: int | None,
        command_id: str | None = None,
    ) -> AppendResult:
        """Append atomically.

        ``expected_version`` None skips the concurrency check; otherwise a stream at another
        version raises ``ConcurrencyConflict``. A batch whose event ids, or whose
        ``command_id``, are already stored returns the earlier result with
        ``duplicate=True`` and stores nothing.
        """

    async def read_stream(self, stream_id: str, *, after_version: int = 0) -> list[RecordedEvent]:
        """Events of one stream with version > ``after_version``, in version order."""

    async def read_all(
        self,
        *,
        after_position: int = 0,
        limit: int = 1000,
        types: Collection[str] | None = None,
    ) -> list[RecordedEvent]:
        """Up to ``limit`` events of the global log with position > ``after_position``;
        with ``types``, only events of those types (the store skips the rest unread)."""

    async def stream_version(self, stream_id: str) -> int:
        """Current version of a stream (0 when it does not exist)."""

    async def last_position(self) -> int:
        """Position of the newest committed event (0 when empty)."""

    async def get_tracking(self, name: str) -> int:
        """Last position a named follower (relay, projection) has durably processed."""

    async def set_tracking(self, name: str, position: int) -> None:
        """Record a follower's position; positions only move forward."""


class CommandRecord(msgspec.Struct, frozen=True):
    """What became of a command id: the events it stored, or the error it was refused with."""

    command_id: str
    stream_id: str
    events: tuple[RecordedEvent, ...] = ()
    error_code: str | None = None
    error_message: str | None = None

    @property
    def rejected(self) -> bool:
        return self.error_code is not None


@runtime_checkable
class CommandLog(Protocol):
    """Remembers every command's outcome so a retried command id gets the same answer."""

    async def find_command(self, command_id: str) -> CommandRecord | None:
        """The outcome recorded for ``command_id``, accepted or refused."""

    async def record_rejection(
        self,
        command_id: str,
        stream_id: str,
        code: str,
        message: str,
    ) -> CommandRecord:
        """Remember a refusal (insert-if-absent) and return what is stored for the id.

        When the id was recorded before (accepted or refused) that earlier record is
        returned unchanged. An ``append`` with a refused command id stores nothing and
        returns ``duplicate=True`` with no events.
        """

    async def record_noop(self, command_id: str, stream_id: str) -> CommandRecord:
        """Remember that ``command_id`` was accepted without events ("already so"), so a
        retry gets that answer even after the stream has moved on; insert-if-absent, like
        ``record_rejection``."""


class Snapshot(msgspec.Struct, frozen=True):
    """A stream's folded state at ``version``, encoded by whoever folds that stream."""

    stream_id: str
    version: int
    payload: bytes


@runtime_checkable
class SnapshotStore(Protocol):
    """Folded states of long streams, so a cold reader folds only what came after.

    A snapshot is a cache, never an authority: the events after its version are always
    read and applied on top, and losing every snapshot only makes loads slower.
    """

    async def save_snapshot(self, stream_id: str, version: int, payload: bytes) -> None:
        """Store the state at ``version``; an older one than the stored snapshot is ignored."""

    async def load_snapshot(self, stream_id: str) -> Snapshot | None:
        """The newest snapshot of ``stream_id``, if any."""


@runtime_checkable
class SnapshottedEventStore(EventStore, SnapshotStore, Protocol):
    """An event store that also keeps snapshots (what a reader that saves its folds needs)."""


@runtime_checkable
class CommandStore(SnapshottedEventStore, CommandLog, Protocol):
    """An event store that also keeps command outcomes and snapshots (what the command
    handler needs)."""
