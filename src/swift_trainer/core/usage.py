"""GPU-hours per owner: a pure fold of the job events, and reports over any window.

``UsageLedger.apply`` folds one event at a time (no I/O, no clock), so the figures can be
rebuilt from the event log at any time and equal a replay. ``usage_report`` groups the
folded attempts, waits and endings by owner, a label or the UTC day, clipped to a window.
Definitions (docs/tenancy.md):

- used: GPUs x seconds from an attempt's start report to its end (or the window's end);
- lost: of a failed, lost or preempted attempt, the seconds since its last checkpoint
  (since its start when it saved none);
- queue wait: from queued to scheduled, counted in the window where the job was scheduled;
- jobs: each job's final status (succeeded, failed, cancelled, stopped), counted in the
  window where it ended; a job queued again since is not final.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal

import msgspec

from .events import (
    AssignmentRejected,
    CheckpointSaved,
    Event,
    JobCancelled,
    JobFailed,
    JobLost,
    JobPaused,
    JobQueued,
    JobRequeued,
    JobScheduled,
    JobStarted,
    JobStopped,
    JobSubmitted,
    JobSucceeded,
    StopRequested,
)

#: The owner of jobs submitted without a key (the operator's CLI, authentication off).
NO_OWNER: Final = "local"
#: A label's group for jobs that do not carry the label.
NO_LABEL: Final = "(none)"
Outcome = Literal[
    "succeeded", "failed", "lost", "stopped", "paused", "cancelled", "preempted", "requeued"
]

#: The outcome each ending event gives its attempt.
_ENDS: Final[dict[type[Event], Outcome]] = {
    JobSucceeded: "succeeded",
    JobFailed: "failed",
    JobLost: "lost",
    JobStopped: "stopped",
    JobPaused: "paused",
    JobCancelled: "cancelled",
}
#: Attempt outcomes whose work since the last checkpoint is lost.
LOSING: Final = ("failed", "lost", "preempted")
FINAL_STATUSES: Final = ("succeeded", "failed", "cancelled", "stopped")


@dataclass(frozen=True)
class JobTags:
    owner: str
    labels: dict[str, str]


#: The tags of a job whose submission is not in the log.
_UNKNOWN: Final = JobTags(NO_OWNER, {})


@dataclass(slots=True)
class Attempt:
    """One attempt of a job on its GPUs; instants are POSIX seconds (fast to sum)."""

    job_id: str
    attempt: int
    gpus: int
    tags: JobTags = _UNKNOWN
    started_at: float | None = None
    ended_at: float | None = None
    outcome: Outcome | None = None
    last_checkpoint_at: float | None = None
    preempting: bool = False

    def lost_from(self) -> float | None:
        """Where lost work begins, for an attempt that ended losing it; else None."""
        if self.started_at is None or self.outcome not in LOSING:
            return None
        if self.last_checkpoint_at is not None and self.last_checkpoint_at > self.started_at:
            return self.last_checkpoint_at
        return self.started_at


@dataclass(frozen=True, slots=True)
class Wait:
    job_id: str
    queued_at: float
    scheduled_at: float
    tags: JobTags = _UNKNOWN


@dataclass(frozen=True, slots=True)
class Ending:
    """A job's final status and when it was reached."""

    status: str
    at: float
    tags: JobTags = _UNKNOWN


@dataclass
class UsageLedger:
    """The folded facts: every attempt, every queue wait, every job's last ending."""

    jobs: dict[str, JobTags] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    waits: list[Wait] = field(default_factory=list)
    endings: dict[str, Ending] = field(default_factory=dict)
    _open: dict[str, Attempt] = field(default_factory=dict)
    _queued_at: dict[str, float] = field(default_factory=dict)

    def apply(self, event: Event) -> None:
        """Fold one event; events of other kinds are ignored."""
        match event:
            case JobSubmitted(job_id=job_id, spec=spec):
                self.jobs[job_id] = JobTags(spec.owner or NO_OWNER, dict(spec.labels))
            case JobQueued(job_id=job_id, at=at) | JobRequeued(job_id=job_id, at=at):
                self._close(job_id, at.timestamp(), "requeued")
                self.endings.pop(job_id, None)
                self._queued_at.setdefault(job_id, at.timestamp())
            case JobScheduled():
                self._scheduled(event)
            case JobStarted() | CheckpointSaved() | StopRequested() | AssignmentRejected():
                self._attempt_fact(event)
            case JobSucceeded() | JobFailed() | JobLost():
                ends = _ENDS[type(event)]
                self._end(event.job_id, event.attempt, event.at.timestamp(), ends, None)
            case JobStopped() | JobPaused() | JobCancelled():
                if isinstance(event, JobCancelled):
                    self._queued_at.pop(event.job_id, None)
                status = _ENDS[type(event)]
                at_s = event.at.timestamp()
                self._end(event.job_id, event.attempt, at_s, status, event.checkpoint)

    def _scheduled(self, event: JobScheduled) -> None:
        job_id, at = event.job_id, event.at.timestamp()
        self._close(job_id, at, "requeued")
        self.endings.pop(job_id, None)
        queued = self._queued_at.pop(job_id, None)
        if queued is not None:
            self.waits.append(Wait(job_id, queued, at, self.tags(job_id)))
        record = Attempt(job_id, event.attempt, len(event.gpu_ids), self.tags(job_id))
        self.attempts.append(record)
        self._open[job_id] = record

    def _attempt_fact(
        self, event: JobStarted | CheckpointSaved | StopRequested | AssignmentRejected
    ) -> None:
        record = self._current(event.job_id, event.attempt)
        if record is None:
            return
        match event:
            case JobStarted(at=at):
                if record.started_at is None:
                    record.started_at = at.timestamp()
            case CheckpointSaved(at=at):
                record.last_checkpoint_at = at.timestamp()
            case StopRequested(intent=intent):
                record.preempting = record.preempting or "preempt" in intent
            case AssignmentRejected(at=at):
                self._close(event.job_id, at.timestamp(), "requeued")

    def tags(self, job_id: str) -> JobTags:
        return self.jobs.get(job_id, _UNKNOWN)

    def _current(self, job_id: str, attempt: int) -> Attempt | None:
        record = self._open.get(job_id)
        if record is None or (attempt and record.attempt != attempt):
            return None
        return record

    def _close(self, job_id: str, at: float, outcome: Outcome) -> None:
        record = self._open.pop(job_id, None)
        if record is not None:
            record.ended_at = at
            record.outcome = "preempted" if record.preempting else outcome

    def _end(
        self, job_id: str, attempt: int, at: float, status: Outcome, checkpoint: str | None
    ) -> None:
        if status in FINAL_STATUSES:
            self.endings[job_id] = Ending(status, at, self.tags(job_id))
        record = self._current(job_id, attempt)
        if record is None:
            return
        if checkpoint is not None:
            record.last_checkpoint_at = at  # saved on the way out: nothing lost
        self._close(job_id, at, status)


# --- reports ------------------------------------------------------------------------------------


class UsageRow(msgspec.Struct, frozen=True, kw_only=True):
    """One group's figures in a window."""

    #: The owner, the label's value, or the UTC day (``YYYY-MM-DD``).
    group: str
    gpu_hours: float
    #: GPU-hours of failed, lost and preempted attempts since their last checkpoint.
    lost_gpu_hours: float
    lost_gpu_hours_by_cause: dict[str, float]
    attempts: int
    queue_waits: int
    queue_wait_mean_s: float | None
    queue_wait_p95_s: float | None
    #: Jobs by final status, counted where they ended.
    jobs: dict[str, int]


GroupBy = str  # "owner", "day" or "label:<key>"


def check_group_by(group_by: str) -> str | None:
    """Why ``group_by`` is not a grouping, or None when it is one."""
    if group_by in ("owner", "day"):
        return None
    if group_by.startswith("label:") and len(group_by) > len("label:"):
        return None
    return f"group_by must be owner, day or label:KEY, got {group_by!r}"


def day_spans(start: datetime, end: datetime) -> Iterator[tuple[str, float]]:
    """``(UTC day, seconds)`` of ``[start, end)`` cut at each midnight."""
    return _day_cuts(start.timestamp(), end.timestamp())


_DAY: Final = 86400.0
_day_names: dict[int, str] = {}


def _day_name(day: int) -> str:
    name = _day_names.get(day)
    if name is None:
        name = _day_names[day] = datetime.fromtimestamp(day * _DAY, UTC).date().isoformat()
    return name


def _day_cuts(lo: float, hi: float) -> Iterator[tuple[str, float]]:
    day = int(lo // _DAY)
    while lo < hi:
        cut = min((day + 1) * _DAY, hi)
        yield _day_name(day), cut - lo
        lo, day = cut, day + 1


def p95(values: list[float]) -> float | None:
    """The nearest-rank 95th percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)]


@dataclass(slots=True)
class _Sums:
    used: float = 0.0
    lost: dict[str, float] = field(default_factory=dict)
    attempts: int = 0
    waits: list[float] = field(default_factory=list)
    jobs: dict[str, int] = field(default_factory=dict)


@dataclass
class _Grouping:
    """The groups of one report, and the key of a job's tags in them."""

    group_by: GroupBy
    lo: float
    hi: float
    owner: str | None
    sums: dict[str, _Sums] = field(default_factory=dict)

    def key(self, tags: JobTags) -> str | None:
        """The group of a job (None: not the owner asked for); ``day`` cuts by time."""
        if self.owner is not None and tags.owner != self.owner:
            return None
        if self.group_by == "owner":
            return tags.owner
        if self.group_by == "day":
            return ""
        return tags.labels.get(self.group_by[6:], NO_LABEL)

    def group(self, key: str) -> _Sums:
        found = self.sums.get(key)
        if found is None:
            found = self.sums[key] = _Sums()
        return found

    def spans(self, key: str, lo: float, hi: float) -> Iterator[tuple[_Sums, float]]:
        if self.group_by == "day":
            for day, seconds in _day_cuts(lo, hi):
                yield self.group(day), seconds
        else:
            yield self.group(key), hi - lo

    def at(self, key: str, instant: float) -> _Sums:
        return self.group(_day_name(int(instant // _DAY)) if self.group_by == "day" else key)


def _add_attempts(grouping: _Grouping, attempts: list[Attempt]) -> None:
    window_lo, window_hi, key_of = grouping.lo, grouping.hi, grouping.key
    for record in attempts:
        started, ended = record.started_at, record.ended_at
        if started is None or started >= window_hi:
            continue
        if ended is None or ended > window_hi:
            ended = window_hi
        lo = max(started, window_lo)
        key = key_of(record.tags) if lo < ended else None
        if key is None:
            continue
        for group, seconds in grouping.spans(key, lo, ended):
            group.used += record.gpus * seconds
            group.attempts += 1
        lost_from = record.lost_from()
        if lost_from is None or record.outcome is None:
            continue
        lo = max(lost_from, window_lo)
        for group, seconds in grouping.spans(key, lo, ended) if lo < ended else ():
            group.lost[record.outcome] = group.lost.get(record.outcome, 0.0) + record.gpus * seconds


def _add_waits_and_endings(
    grouping: _Grouping, waits: list[Wait], endings: Iterable[Ending]
) -> None:
    lo, hi, key_of = grouping.lo, grouping.hi, grouping.key
    for wait in waits:
        if lo <= wait.scheduled_at < hi and (key := key_of(wait.tags)) is not None:
            grouping.at(key, wait.scheduled_at).waits.append(wait.scheduled_at - wait.queued_at)
    for ending in endings:
        if lo <= ending.at < hi and (key := key_of(ending.tags)) is not None:
            jobs = grouping.at(key, ending.at).jobs
            jobs[ending.status] = jobs.get(ending.status, 0) + 1


def usage_report(
    ledger: UsageLedger,
    *,
    group_by: GroupBy,
    start: datetime,
    end: datetime,
    owner: str | None = None,
) -> list[UsageRow]:
    """Rows per group for ``[start, end)``; ``owner`` keeps one owner's jobs only.

    An attempt still running counts up to ``end`` (pass the current time for "now").
    """
    grouping = _Grouping(group_by, start.timestamp(), end.timestamp(), owner)
    _add_attempts(grouping, ledger.attempts)
    _add_waits_and_endings(grouping, ledger.waits, ledger.endings.values())
    return [_row(key, grouping.sums[key]) for key in sorted(grouping.sums)]


def _hours(seconds: float) -> float:
    return round(seconds / 3600.0, 6)


def _row(key: str, group: _Sums) -> UsageRow:
    waits = group.waits
    return UsageRow(
        group=key,
        gpu_hours=_hours(group.used),
        lost_gpu_hours=_hours(sum(group.lost.values())),
        lost_gpu_hours_by_cause={cause: _hours(s) for cause, s in sorted(group.lost.items())},
        attempts=group.attempts,
        queue_waits=len(waits),
        queue_wait_mean_s=round(sum(waits) / len(waits), 3) if waits else None,
        queue_wait_p95_s=p95(waits),
        jobs=dict(sorted(group.jobs.items())),
    )


def gpu_seconds_by_owner(ledger: UsageLedger, now: datetime) -> dict[str, float]:
    """Every owner's GPU-seconds used up to ``now``, for a counter that only grows."""
    totals: dict[str, float] = {}
    for record in ledger.attempts:
        if record.started_at is None:
            continue
        tags = record.tags
        ended = record.ended_at if record.ended_at is not None else now.timestamp()
        seconds = max(ended - record.started_at, 0.0)
        totals[tags.owner] = totals.get(tags.owner, 0.0) + record.gpus * seconds
    return totals
