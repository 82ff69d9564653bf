"""The audit hash chain: every stored event's hash covers its content and its predecessor's.

Why a chain: an auditor must be able to tell that nobody edited or removed an event after it
was written, without trusting the database. Each event's hash is SHA-256 over the previous
event's hash and position and over every stored column of the event, so changing one byte,
or deleting a row, breaks the link of every later event. The store computes the hash while it
holds its write lock (PostgreSQL in PL/pgSQL, SQLite in Python), and :class:`ChainVerifier`
recomputes it here, from the rows or from an export file, with the same encoding.

The encoding is length-prefixed (8-byte big-endian lengths and integers), so it is
unambiguous and both PostgreSQL (``int8send``, ``convert_to``, ``sha256``) and Python can
produce it byte for byte. The time is the UTC text ``YYYY-MM-DDTHH:MM:SS.ffffff``.

A chain cannot tell that the newest events were cut off: compare the head hash that
``audit verify`` prints with one you kept (that is what the head is printed for).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final, Literal

import msgspec

from .store import EventPlace

#: The "previous hash" of the first event of a store.
GENESIS_HASH: Final = bytes(32)

_INT: Final = struct.Struct(">q")
_TWO_INTS: Final = struct.Struct(">qq")
_THREE_INTS: Final = struct.Struct(">qqq")

ProblemKind = Literal["hash_mismatch", "missing_hash", "missing_position", "out_of_order"]


def chain_time(at: datetime) -> str:
    """The recorded time as the chain hashes it: UTC, microseconds, ISO 8601 without zone."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def event_hash(
    previous_hash: bytes,
    previous_position: int,
    *,
    position: int,
    stream_id: str,
    version: int,
    event_id: str,
    type: str,
    schema_version: int,
    payload: bytes,
    metadata: str,
    recorded_at: str,
) -> bytes:
    """SHA-256 of the link and the event, in the encoding PostgreSQL's ``event_hash`` uses.

    Each field is an 8-byte big-endian integer, or an 8-byte length and the bytes. Written
    as one join with the integers packed in runs: this runs for every event appended.
    """
    stream = stream_id.encode()
    event = event_id.encode()
    kind = type.encode()
    meta = metadata.encode()
    stamp = recorded_at.encode()
    return hashlib.sha256(
        b"".join(
            (
                previous_hash,
                _THREE_INTS.pack(previous_position, position, len(stream)),
                stream,
                _TWO_INTS.pack(version, len(event)),
                event,
                _INT.pack(len(kind)),
                kind,
                _TWO_INTS.pack(schema_version, len(payload)),
                payload,
                _INT.pack(len(meta)),
                meta,
                _INT.pack(len(stamp)),
                stamp,
            )
        )
    ).digest()


class ChainRow(EventPlace, frozen=True):
    """One stored event exactly as the chain covers it (metadata as stored text).

    This is also the line format of ``audit export``: ``payload`` travels as base64 and
    ``hash`` as hex, so an export is checked with the same code as the database.
    """

    payload: bytes
    metadata: str
    recorded_at: str
    hash: str | None

    def computed_hash(self, previous_hash: bytes, previous_position: int) -> bytes:
        return event_hash(
            previous_hash,
            previous_position,
            position=self.position,
            stream_id=self.stream_id,
            version=self.version,
            event_id=self.event_id,
            type=self.type,
            schema_version=self.schema_version,
            payload=self.payload,
            metadata=self.metadata,
            recorded_at=self.recorded_at,
        )


class ChainAnchor(msgspec.Struct, frozen=True):
    """Where a partial chain (an export from ``--since``) hangs on: the event before it."""

    position: int
    hash: str


class ChainProblem(msgspec.Struct, frozen=True):
    """One place where the stored history is not what was written."""

    position: int
    kind: ProblemKind
    message: str


class ChainVerifier:
    """Checks rows in position order, one batch at a time, keeping only the last link.

    ``strict_from`` is the first position from which positions must be consecutive: stores
    that existed before the chain may have gaps left by refused PostgreSQL appends, which
    the migration recorded (``audit_chain.migrated_through``); since then, appends take
    ``max(position) + 1`` under the write lock, so a gap means a deleted row.
    """

    def __init__(self, anchor: ChainAnchor | None = None, *, strict_from: int = 0) -> None:
        self.previous_position = anchor.position if anchor else 0
        self.previous_hash = bytes.fromhex(anchor.hash) if anchor else GENESIS_HASH
        self.strict_from = strict_from
        self.checked = 0
        self.problems: list[ChainProblem] = []

    @property
    def head(self) -> ChainAnchor:
        """The last event checked: keep its hash to detect a cut-off tail later."""
        return ChainAnchor(position=self.previous_position, hash=self.previous_hash.hex())

    def check(self, rows: Iterable[ChainRow]) -> None:
        for row in rows:
            self._check_one(row)

    def _check_one(self, row: ChainRow) -> None:
        expected_position = self.previous_position + 1
        if row.position <= self.previous_position:
            self._problem(
                row.position,
                "out_of_order",
                f"position {row.position} comes after position {self.previous_position}",
            )
            return
        if row.position != expected_position and row.position > self.strict_from:
            missing = (
                str(expected_position)
                if row.position == expected_position + 1
                else f"{expected_position}..{row.position - 1}"
            )
            self._problem(
                expected_position,
                "missing_position",
                f"position {missing} is missing: the event at position {row.position} "
                f"follows position {self.previous_position}",
            )
        computed = row.computed_hash(self.previous_hash, self.previous_position)
        if row.hash is None:
            self._problem(row.position, "missing_hash", f"position {row.position} has no hash")
        elif row.hash != computed.hex():
            self._problem(
                row.position,
                "hash_mismatch",
                f"position {row.position} (event {row.event_id}, {row.type} in "
                f"{row.stream_id}): stored hash does not match its content and the "
                "previous event: changed, or an event before it was removed",
            )
        # Go on from the stored hash, so one edit is reported once, not at every later event.
        self.previous_hash = bytes.fromhex(row.hash) if row.hash else computed
        self.previous_position = row.position
        self.checked += 1

    def _problem(self, position: int, kind: ProblemKind, message: str) -> None:
        self.problems.append(ChainProblem(position=position, kind=kind, message=message))


class ExportLine(msgspec.Struct, frozen=True, omit_defaults=True):
    """A line of ``audit export``: the anchor first, then one event per line."""

    anchor: ChainAnchor | None = None
    event: ChainRow | None = None


_encode_line: Final = msgspec.json.Encoder().encode
_decode_line: Final = msgspec.json.Decoder(ExportLine).decode


def export_line(line: ExportLine) -> bytes:
    return _encode_line(line)


def read_export(lines: Iterable[bytes]) -> tuple[ChainAnchor | None, list[ChainRow]]:
    """Parse an export; a malformed line is a ValueError naming its line number."""
    anchor: ChainAnchor | None = None
    rows: list[ChainRow] = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            line = _decode_line(raw)
        except msgspec.DecodeError as exc:
            raise ValueError(f"line {number}: not an audit export line: {exc}") from exc
        if line.anchor is not None:
            if number != 1:
                raise ValueError(f"line {number}: the anchor must be the first line")
            anchor = line.anchor
        if line.event is not None:
            rows.append(line.event)
    return anchor, rows


def payload_text(row: ChainRow) -> str:
    """The payload for people: UTF-8 JSON as it is, anything else as base64."""
    try:
        return row.payload.decode()
    except UnicodeDecodeError:
        return base64.b64encode(row.payload).decode()
