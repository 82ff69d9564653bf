"""Tailing output files: whole lines, ``\r`` as a line end, and bounded reads."""

from __future__ import annotations

import json
from pathlib import Path

from swift_trainer.runner.log_tail import MAX_LINE, MAX_READ_BYTES, LineTail, seed_tail
from swift_trainer.runner.training_log import TrainingLogReader, TrainingProgress


def test_lines_end_at_newlines_and_carriage_returns(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    tail = LineTail(path)
    assert tail.poll() == []  # not there yet
    path.write_bytes(b"one\r\ntwo\rthree\nhalf")
    assert tail.poll() == ["one", "two", "three"]
    with path.open("ab") as handle:
        handle.write(b"-done\nlast")
    assert tail.poll() == ["half-done"]
    assert tail.finish() == ["last"]
    assert tail.offset == path.stat().st_size


def test_a_line_that_never_ends_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    path.write_bytes(b"x" * (MAX_LINE + 5))
    [line] = LineTail(path).poll()
    assert len(line) == MAX_LINE


def test_a_large_backlog_is_read_in_bounded_chunks(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    line = b"y" * 99 + b"\n"
    path.write_bytes(line * 30_000)  # about 3 MB
    tail = LineTail(path)
    assert tail.max_read == MAX_READ_BYTES == 1024 * 1024
    reads = []
    total = 0
    while True:
        before = tail.offset
        total += len(tail.poll())
        reads.append(tail.offset - before)
        if tail.at_end:
            break
    assert max(reads) <= MAX_READ_BYTES
    assert len(reads) == 3
    assert total == 30_000
    assert tail.offset == path.stat().st_size


def test_finish_reads_every_chunk_left(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    path.write_bytes(b"".join(f"line {i}\n".encode() for i in range(1000)) + b"end")
    tail = LineTail(path, max_read=1000)
    lines = tail.finish()
    assert lines[0] == "line 0"
    assert lines[-2:] == ["line 999", "end"]
    assert len(lines) == 1001


def test_the_seed_is_the_last_lines_before_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "err.log"
    path.write_bytes(b"a\nb\nc\nd\n")
    assert seed_tail(str(path), 6, 2) == ["b", "c"]
    assert seed_tail(str(tmp_path / "absent"), 6, 2) == []


def test_the_training_log_is_read_in_bounded_chunks_too(tmp_path: Path) -> None:
    path = tmp_path / "logging.jsonl"
    records = [json.dumps({"global_step/max_steps": f"{i}/500", "loss": 1.0}) for i in range(500)]
    path.write_text("\n".join(records) + "\n")
    reader = TrainingLogReader(path, max_read=4096)
    first = reader.poll()
    assert 0 < len(first) < 500
    assert reader.offset <= 4096
    assert not reader.at_end
    rest = reader.finish()
    steps = [r.step for r in (*first, *rest) if isinstance(r, TrainingProgress)]
    assert steps == list(range(500))
    assert reader.at_end
