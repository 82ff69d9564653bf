"""Reading what a running ``swift sft`` leaves on disk: ``logging.jsonl`` and checkpoints.

ms-swift appends one JSON object per ``on_log`` call to ``<output_dir>/logging.jsonl``
(``ProgressCallbackNew.on_log`` / ``add_train_message`` in ``swift/trainers/patcher.py``):
the trainer's metrics plus ``global_step/max_steps`` (``"3/100"``), ``elapsed_time`` /
``remaining_time`` (``format_time``: ``"1d 2h 3m 4s"``, ``"4m 28s"``, ``"34s"``),
``memory(GiB)`` (only once memory was reserved on an accelerator: absent on a CPU) and
``train_speed(s/it)``, as a real ms-swift 4.6.0 run showed; older 3.x builds wrote
``percentage`` and ``train_speed(iter/s)``, which are read too. Evaluation lines carry
``eval_loss``; the line written when ``trainer.train()`` returns carries ``train_runtime``
and is the run's summary. 4.6.0 then appends its own run record (``last_model_checkpoint``,
``global_step``, the whole ``log_history``), which is neither and is skipped. A line is
appended while swift runs, so the last one may be half-written when we read: it is kept
back until its newline arrives.

A malformed line (a crash mid-write, a disk-full truncation) is skipped and counted; it
never stops the reading, because one bad line must not cost a job its progress reports.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

import msgspec

from ..core.progress import MAX_EARLIER_SAMPLES, MetricSample, TrainingMetrics, sample_of
from .log_tail import MAX_READ_BYTES

LOGGING_FILE: Final = "logging.jsonl"
CHECKPOINT_RE: Final = re.compile(r"^checkpoint-(\d+)$")
#: HF's Trainer writes this file last when it saves a checkpoint.
CHECKPOINT_COMPLETE_MARKER: Final = "trainer_state.json"


#: One progress line, in the units the core's ``ReportProgress`` uses (``train_speed`` is
#: converted to iterations per second when swift logged seconds per iteration).
TrainingProgress = TrainingMetrics


class TrainingSummary(msgspec.Struct, frozen=True, omit_defaults=True):
    """The line swift writes once ``trainer.train()`` returns, even after a graceful stop."""

    step: int | None = None
    max_steps: int | None = None
    train_runtime_s: float | None = None
    train_loss: float | None = None
    epoch: float | None = None
    train_samples_per_second: float | None = None
    train_steps_per_second: float | None = None

    @property
    def reached_final_step(self) -> bool:
        return self.step is not None and self.max_steps is not None and self.step >= self.max_steps


LogRecord = TrainingProgress | TrainingSummary


def merge_progress(
    previous: TrainingProgress | None,
    new: TrainingProgress,
) -> TrainingProgress:
    """The newest value of every field: an evaluation line (``eval_loss``, no ``loss``)
    must not blank out the training loss, nor a training line the last ``eval_loss``.

    Throttling keeps only one record per interval, so without this an evaluation result
    logged between two training lines would usually never be reported.
    """
    if previous is None or new.step < previous.step:
        return new
    fields = {
        name: value for name, value in msgspec.structs.asdict(new).items() if value is not None
    }
    return msgspec.structs.replace(previous, **fields)


_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")
_UNIT_SECONDS: Final = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_CLOCK: Final = re.compile(r"^(?:(\d+)\s+days?,\s*)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)$")


def parse_duration(text: object) -> float | None:
    """Seconds from swift's ``format_time`` (``"1d 2h 3m 4s"``), a clock (``"0:01:02"``,
    ``"1 day, 2:03:04"``) or a plain number; None when it is none of those."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int | float):
        return float(text) if math.isfinite(text) else None
    if not isinstance(text, str):
        return None
    value = text.strip()
    if not value:
        return None
    clock = _CLOCK.match(value)
    if clock:
        days, hours, minutes, seconds = clock.groups()
        return (
            int(days or 0) * 86400.0
            + int(hours or 0) * 3600.0
            + int(minutes) * 60.0
            + float(seconds)
        )
    parts = _DURATION_PART.findall(value)
    if parts and _DURATION_PART.sub("", value).strip() == "":
        return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    result = float(value)
    # A NaN loss (divergence) is reported as "unknown" rather than poisoning averages
    # downstream; the trainer's own stderr still says what happened.
    return result if math.isfinite(result) else None


def _step_pair(value: object) -> tuple[int, int | None] | None:
    if not isinstance(value, str) or "/" not in value:
        return None
    current, _, maximum = value.partition("/")
    try:
        step = int(current)
    except ValueError:
        return None
    try:
        max_steps: int | None = int(maximum)
    except ValueError:
        max_steps = None
    return step, max_steps


def _count(value: object) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number >= 0 else None


def _train_speed(data: dict[str, Any]) -> float | None:
    per_second = _number(data.get("train_speed(iter/s)"))
    if per_second is not None:
        return per_second
    seconds_per_iter = _number(data.get("train_speed(s/it)"))
    if seconds_per_iter:
        return 1.0 / seconds_per_iter
    return None


def parse_log_record(data: object) -> LogRecord | None:
    """The typed meaning of one decoded ``logging.jsonl`` object; None if it has none."""
    if not isinstance(data, dict):
        return None
    pair = _step_pair(data.get("global_step/max_steps"))
    if "train_runtime" in data:
        return TrainingSummary(
            step=pair[0] if pair else None,
            max_steps=pair[1] if pair else None,
            train_runtime_s=_number(data.get("train_runtime")),
            train_loss=_number(data.get("train_loss")),
            epoch=_number(data.get("epoch")),
            train_samples_per_second=_number(data.get("train_samples_per_second")),
            train_steps_per_second=_number(data.get("train_steps_per_second")),
        )
    if pair is None:
        return None
    return TrainingProgress(
        step=pair[0],
        max_steps=pair[1],
        epoch=_number(data.get("epoch")),
        loss=_number(data.get("loss")),
        learning_rate=_number(data.get("learning_rate")),
        grad_norm=_number(data.get("grad_norm")),
        elapsed_s=parse_duration(data.get("elapsed_time")),
        remaining_s=parse_duration(data.get("remaining_time")),
        memory_gib=_number(data.get("memory(GiB)")),
        train_speed=_train_speed(data),
        eval_loss=_number(data.get("eval_loss")),
        tokens_seen=_count(data.get("num_input_tokens_seen")),
    )


class TrainingLogReader:
    """Incremental reader of ``logging.jsonl`` that survives every state the file can be in.

    The file may not exist yet (swift writes the first line after model loading), may end
    in a half-written line, may be recreated (a fresh run in the same folder) or truncated.
    ``start_offset`` lets a new attempt skip the lines an earlier attempt left in the same
    output folder, so a previous run's summary is never mistaken for this run's.
    """

    def __init__(
        self, path: str | Path, *, start_offset: int = 0, max_read: int = MAX_READ_BYTES
    ) -> None:
        self.path = Path(path)
        self.offset = start_offset
        #: The most one ``poll`` reads, so a backlog never blocks the event loop for long.
        self.max_read = max_read
        #: False while the last read stopped at ``max_read`` with more to come.
        self.at_end = True
        self._inode: int | None = None
        self._partial = b""
        self.malformed_lines = 0
        self.last_malformed: str | None = None
        self.last_progress: TrainingProgress | None = None
        self.summary: TrainingSummary | None = None
        self.max_steps: int | None = None

    @property
    def last_step(self) -> int | None:
        steps = [r.step for r in (self.last_progress, self.summary) if r and r.step is not None]
        return max(steps) if steps else None

    @property
    def reached_final_step(self) -> bool:
        step, max_steps = self.last_step, self.max_steps
        return step is not None and max_steps is not None and step >= max_steps

    def _read_new_bytes(self) -> bytes:
        try:
            with self.path.open("rb") as handle:
                stat = os.fstat(handle.fileno())
                if self._inode is not None and stat.st_ino != self._inode:
                    self.offset, self._partial = 0, b""  # recreated: start over
                elif stat.st_size < self.offset:
                    self.offset, self._partial = 0, b""  # truncated
                self._inode = stat.st_ino
                handle.seek(self.offset)
                data = handle.read(self.max_read)
        except FileNotFoundError:
            data = b""
        self.at_end = len(data) < self.max_read
        self.offset += len(data)
        return data

    def poll(self) -> list[LogRecord]:
        """The records of the complete lines in the next chunk (at most ``max_read`` bytes)."""
        data = self._read_new_bytes()
        if not data:
            return []
        chunks = (self._partial + data).split(b"\n")
        self._partial = chunks.pop()
        return self._decode(chunks)

    def finish(self) -> list[LogRecord]:
        """After the writer has exited: a last line without newline is complete after all."""
        records = self.poll()
        while not self.at_end:
            records += self.poll()
        if self._partial.strip():
            tail, self._partial = self._partial, b""
            records += self._decode([tail])
        return records

    def _decode(self, lines: Iterable[bytes]) -> list[LogRecord]:
        records: list[LogRecord] = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                # stdlib json, not msgspec: swift's json.dumps writes NaN for a diverged loss.
                data = json.loads(raw)
            except (UnicodeDecodeError, ValueError):
                self._malformed(raw)
                continue
            record = parse_log_record(data)
            if record is None:
                if not isinstance(data, dict):
                    self._malformed(raw)
                continue
            self._remember(record)
            records.append(record)
        return records

    def _malformed(self, raw: bytes) -> None:
        self.malformed_lines += 1
        self.last_malformed = raw[:200].decode("utf-8", "replace")

    def _remember(self, record: LogRecord) -> None:
        if record.max_steps is not None:
            self.max_steps = record.max_steps
        if isinstance(record, TrainingSummary):
            self.summary = record
        else:
            self.last_progress = record


def current_log_size(output_dir: str | Path) -> int:
    """Where a new attempt's lines will start in an existing ``logging.jsonl``."""
    try:
        return (Path(output_dir) / LOGGING_FILE).stat().st_size
    except FileNotFoundError:
        return 0


class ProgressThrottle:
    """At most one progress per interval, and never losing the newest one.

    A step every 100 ms would flood the bus; dropping updates is fine, but the last
    progress before the job ends must get out, so a held-back record stays pending until
    ``due()`` or ``flush()`` releases it.
    """

    def __init__(self, interval_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last_emit: float | None = None
        self._pending: TrainingProgress | None = None
        self._earlier: list[MetricSample] = []

    def offer(self, progress: TrainingProgress) -> TrainingProgress | None:
        """The record to send now, or None when it is held back as the pending one.

        A pending record that a newer step replaces is kept as a sample (``take_earlier``),
        so the curves keep every logged step; one at the same step is merged into the new.
        """
        pending = self._pending
        fits = len(self._earlier) < MAX_EARLIER_SAMPLES
        if pending is not None and pending.step != progress.step and fits:
            self._earlier.append(sample_of(pending))
        self._pending = progress
        return self.due()

    def take_earlier(self) -> tuple[MetricSample, ...]:
        """The samples held back since the last emitted record, oldest first; clears them."""
        earlier, self._earlier = tuple(self._earlier), []
        return earlier

    def due(self) -> TrainingProgress | None:
        """The pending record if the interval has passed since the last emission."""
        if self._pending is None:
            return None
        now = self._clock()
        if self._last_emit is not None and now - self._last_emit < self.interval_s:
            return None
        self._last_emit = now
        pending, self._pending = self._pending, None
        return pending

    def flush(self) -> TrainingProgress | None:
        """The pending record regardless of the interval (the job is ending)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._last_emit = self._clock()
        return pending


class Checkpoint(msgspec.Struct, frozen=True):
    step: int
    path: str


def _checkpoint_step(path: Path) -> int | None:
    match = CHECKPOINT_RE.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | Path) -> list[Checkpoint]:
    """Complete checkpoints in step order; a folder still being written is not one yet."""
    root = Path(output_dir)
    found: list[Checkpoint] = []
    try:
        entries = list(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        step = _checkpoint_step(entry)
        if step is None:
            continue
        if (entry / CHECKPOINT_COMPLETE_MARKER).is_file():
            found.append(Checkpoint(step=step, path=str(entry)))
    found.sort(key=lambda c: c.step)
    return found


def latest_checkpoint(output_dir: str | Path) -> Checkpoint | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


class CheckpointWatcher:
    """Reports each ``checkpoint-N`` folder once, when it is complete.

    ``known`` holds folders reported before (an earlier attempt's, or this attempt's
    before a runner restart) so they are not reported again.
    """

    def __init__(self, output_dir: str | Path, *, known: Iterable[str] = ()) -> None:
        self.output_dir = Path(output_dir)
        self.known: set[str] = set(known)

    def scan(self) -> list[Checkpoint]:
        new = [c for c in list_checkpoints(self.output_dir) if c.path not in self.known]
        self.known.update(c.path for c in new)
        return new

    def removed(self) -> list[str]:
        """Reported checkpoints that are gone from disk (``save_total_limit`` rotated
        them out, or someone deleted them); each is returned once."""
        present = {c.path for c in list_checkpoints(self.output_dir)}
        gone = sorted(path for path in self.known if path not in present)
        self.known.difference_update(gone)
        return gone
