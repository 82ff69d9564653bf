"""The chain's encoding and the verifier on their own (the SQL side is in test_sqlaudit)."""

from __future__ import annotations

import pytest

from swift_trainer.core.audit_chain import (
    GENESIS_HASH,
    ChainAnchor,
    ChainRow,
    ChainVerifier,
    ExportLine,
    event_hash,
    export_line,
    read_export,
)

FIELDS = {
    "stream_id": "job-a",
    "version": 1,
    "event_id": "e1",
    "type": "JobQueued",
    "schema_version": 1,
    "payload": b"{}",
    "metadata": "{}",
    "recorded_at": "2026-01-01T00:00:00.000001",
}


def chain(count: int) -> list[ChainRow]:
    rows, link = [], GENESIS_HASH
    for position in range(1, count + 1):
        fields = {**FIELDS, "event_id": f"e{position}", "version": position}
        link = event_hash(link, position - 1, position=position, **fields)
        rows.append(ChainRow(position=position, hash=link.hex(), **fields))
    return rows


def test_the_encoding_is_unambiguous() -> None:
    """Moving a byte from one field to the next must change the hash."""
    base = event_hash(GENESIS_HASH, 0, position=1, **FIELDS)
    shifted = {**FIELDS, "stream_id": "job-", "event_id": "ae1"}
    assert event_hash(GENESIS_HASH, 0, position=1, **shifted) != base
    assert event_hash(GENESIS_HASH, 1, position=1, **FIELDS) != base
    assert event_hash(bytes(31) + b"\x01", 0, position=1, **FIELDS) != base


def test_an_intact_chain_and_each_kind_of_damage() -> None:
    rows = chain(5)
    verifier = ChainVerifier()
    verifier.check(rows)
    assert (verifier.problems, verifier.checked, verifier.head.position) == ([], 5, 5)

    swapped = ChainVerifier()
    swapped.check([rows[0], rows[2], rows[1], rows[3]])
    assert [(p.position, p.kind) for p in swapped.problems][:3] == [
        (2, "missing_position"),
        (3, "hash_mismatch"),
        (2, "out_of_order"),
    ]

    unhashed = ChainVerifier()
    unhashed.check([rows[0], ChainRow(**{**_fields(rows[1]), "hash": None}), *rows[2:]])
    assert [(p.position, p.kind) for p in unhashed.problems] == [(2, "missing_hash")]

    legacy_gap = ChainVerifier(strict_from=3)
    legacy_gap.check([rows[0], *rows[2:]])
    assert [p.kind for p in legacy_gap.problems] == ["hash_mismatch"], "only the link breaks"


def _fields(row: ChainRow) -> dict[str, object]:
    return {name: getattr(row, name) for name in row.__struct_fields__}


def test_a_partial_chain_hangs_on_its_anchor() -> None:
    rows = chain(6)
    anchor = ChainAnchor(position=3, hash=rows[2].hash or "")
    verifier = ChainVerifier(anchor)
    verifier.check(rows[3:])
    assert verifier.problems == []
    wrong = ChainVerifier(ChainAnchor(position=3, hash=rows[1].hash or ""))
    wrong.check(rows[3:])
    assert [p.position for p in wrong.problems] == [4]


def test_export_lines_round_trip_and_bad_lines_are_named() -> None:
    rows = chain(2)
    lines = [export_line(ExportLine(anchor=ChainAnchor(position=0, hash=GENESIS_HASH.hex())))]
    lines += [export_line(ExportLine(event=row)) for row in rows]
    anchor, parsed = read_export([*lines, b""])
    assert anchor is not None and parsed == rows
    with pytest.raises(ValueError, match="line 2: not an audit export line"):
        read_export([lines[0], b"{not json"])
    with pytest.raises(ValueError, match="line 2: the anchor must be the first line"):
        read_export([lines[1], lines[0]])
