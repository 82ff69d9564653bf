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
from datetime import UTC, datetime, timedelta
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


@dataclass
class Attempt:
    """One attempt of a job on its GPUs."""

    job_id: str
    attempt: int
    gpus: int
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: Outcome | None = None
    last_checkpoint_at: datetime | None = None
    preempting: bool = False

    def lost_from(self) -> datetime | None:
        """Where lost work begins, for an attempt that ended losing it; else None."""
        if self.started_at is None or self.outcome not in LOSING:
            return None
        if self.last_checkpoint_at is not None and self.last_checkpoint_at > self.started_at:
            return self.last_checkpoint_at
        return self.started_at


@dataclass(frozen=True)
class Wait:
    job_id: str
    queued_at: datetime
    scheduled_at: datetime


@dataclass(frozen=True)
class JobTags:
    owner: str
    labels: dict[str, str]


@dataclass
class UsageLedger:
    """The folded facts: every attempt, every queue wait, every job's last ending."""

    jobs: dict[str, JobTags] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    waits: list[Wait] = field(default_factory=list)
    endings: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    _open: dict[str, Attempt] = field(default_factory=dict)
    _queued_at: dict[str, datetime] = field(default_factory=dict)

    def apply(self, event: Event) -> None:
        """Fold one event; events of other kinds are ignored."""
        match event:
            case JobSubmitted(job_id=job_id, spec=spec):
                self.jobs[job_id] = JobTags(spec.owner or NO_OWNER, dict(spec.labels))
            case JobQueued(job_id=job_id, at=at) | JobRequeued(job_id=job_id, at=at):
                self._close(job_id, at, "requeued")
                self.endings.pop(job_id, None)
                self._queued_at.setdefault(job_id, at)
            case JobScheduled():
                self._scheduled(event)
            case JobStarted() | CheckpointSaved() | StopRequested() | AssignmentRejected():
                self._attempt_fact(event)
            case JobSucceeded() | JobFailed() | JobLost():
                self._end(event.job_id, event.attempt, event.at, _ENDS[type(event)], None)
            case JobStopped() | JobPaused() | JobCancelled():
                if isinstance(event, JobCancelled):
                    self._queued_at.pop(event.job_id, None)
                status = _ENDS[type(event)]
                self._end(event.job_id, event.attempt, event.at, status, event.checkpoint)

    def _scheduled(self, event: JobScheduled) -> None:
        job_id, at = event.job_id, event.at
        self._close(job_id, at, "requeued")
        self.endings.pop(job_id, None)
        queued = self._queued_at.pop(job_id, None)
        if queued is not None:
            self.waits.append(Wait(job_id, queued, at))
        record = Attempt(job_id, event.attempt, len(event.gpu_ids))
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
                record.started_at = record.started_at or at
            case CheckpointSaved(at=at):
                record.last_checkpoint_at = at
            case StopRequested(intent=intent):
                record.preempting = record.preempting or "preempt" in intent
            case AssignmentRejected(at=at):
                self._close(event.job_id, at, "requeued")

    def _current(self, job_id: str, attempt: int) -> Attempt | None:
        record = self._open.get(job_id)
        if record is None or (attempt and record.attempt != attempt):
            return None
        return record

    def _close(self, job_id: str, at: datetime, outcome: Outcome) -> None:
        record = self._open.pop(job_id, None)
        if record is not None:
            record.ended_at = at
            record.outcome = "preempted" if record.preempting else outcome

    def _end(
        self, job_id: str, attempt: int, at: datetime, status: Outcome, checkpoint: str | None
    ) -> None:
        if status in FINAL_STATUSES:
            self.endings[job_id] = (status, at)
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
    at = start
    while at < end:
        midnight = datetime(at.year, at.month, at.day, tzinfo=UTC) + timedelta(days=1)
        cut = min(midnight, end)
        yield at.astimezone(UTC).date().isoformat(), (cut - at).total_seconds()
        at = cut


def p95(values: list[float]) -> float | None:
    """The nearest-rank 95th percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)]


_TICK: Final = timedelta(microseconds=1)
_UNKNOWN: Final = JobTags(NO_OWNER, {})


@dataclass
class _Sums:
    used: float = 0.0
    lost: dict[str, float] = field(default_factory=dict)
    attempts: int = 0
    waits: list[float] = field(default_factory=list)
    jobs: dict[str, int] = field(default_factory=dict)


@dataclass
class _Grouping:
    """Which group a stretch of a job's time falls in, and which jobs count."""

    ledger: UsageLedger
    group_by: GroupBy
    start: datetime
    end: datetime
    owner: str | None
    sums: dict[str, _Sums] = field(default_factory=dict)

    def tags(self, job_id: str) -> JobTags:
        return self.ledger.jobs.get(job_id, _UNKNOWN)

    def visible(self, job_id: str) -> bool:
        return self.owner is None or self.tags(job_id).owner == self.owner

    def spans(self, job_id: str, lo: datetime, hi: datetime) -> Iterable[tuple[_Sums, float]]:
        """The groups ``[lo, hi)`` of a job falls in, with its seconds in each."""
        if self.group_by == "day":
            return [(self.group(day), s) for day, s in day_spans(lo, hi)]
        tags = self.tags(job_id)
        if self.group_by == "owner":
            key = tags.owner
        else:
            key = tags.labels.get(self.group_by[len("label:") :], NO_LABEL)
        return [(self.group(key), (hi - lo).total_seconds())]

    def at(self, job_id: str, instant: datetime) -> _Sums:
        """The group of one instant of a job."""
        return next(iter(self.spans(job_id, instant, instant + _TICK)))[0]

    def group(self, key: str) -> _Sums:
        return self.sums.setdefault(key, _Sums())

    def clip(self, lo: datetime, hi: datetime | None) -> tuple[datetime, datetime] | None:
        lo, top = max(lo, self.start), min(hi or self.end, self.end)
        return (lo, top) if lo < top else None

    def add_attempt(self, record: Attempt) -> None:
        if record.started_at is None or not self.visible(record.job_id):
            return
        used = self.clip(record.started_at, record.ended_at)
        if used is None:
            return
        counted: set[int] = set()
        for group, seconds in self.spans(record.job_id, *used):
            group.used += record.gpus * seconds
            if id(group) not in counted:
                group.attempts += 1
                counted.add(id(group))
        lost_from = record.lost_from()
        lost = self.clip(lost_from, record.ended_at) if lost_from is not None else None
        if lost is None or record.outcome is None:
            return
        for group, seconds in self.spans(record.job_id, *lost):
            group.lost[record.outcome] = group.lost.get(record.outcome, 0.0) + record.gpus * seconds

    def add_wait(self, wait: Wait) -> None:
        if self.start <= wait.scheduled_at < self.end and self.visible(wait.job_id):
            seconds = (wait.scheduled_at - wait.queued_at).total_seconds()
            self.at(wait.job_id, wait.scheduled_at).waits.append(seconds)

    def add_ending(self, job_id: str, status: str, instant: datetime) -> None:
        if self.start <= instant < self.end and self.visible(job_id):
            jobs = self.at(job_id, instant).jobs
            jobs[status] = jobs.get(status, 0) + 1


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
    grouping = _Grouping(ledger, group_by, start, end, owner)
    for record in ledger.attempts:
        grouping.add_attempt(record)
    for wait in ledger.waits:
        grouping.add_wait(wait)
    for job_id, (status, instant) in ledger.endings.items():
        grouping.add_ending(job_id, status, instant)
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
        tags = ledger.jobs.get(record.job_id, _UNKNOWN)
        seconds = max(((record.ended_at or now) - record.started_at).total_seconds(), 0.0)
        totals[tags.owner] = totals.get(tags.owner, 0.0) + record.gpus * seconds
    return totals
