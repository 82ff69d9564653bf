"""The in-memory read model: the embedded mode's twin of the Redis one.

It persists the same plans with the same index names as the Redis backend, so a snapshot
of one equals a snapshot of the other after the same history. Nothing awaits between
checking the applied position and applying a batch, so a batch lands whole.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec

from swift_trainer.core.job import JobStatus
from swift_trainer.core.queue_processor import QueueProcessorState
from swift_trainer.core.store import RecordedEvent

from .interface import check_limit
from .projection import (
    LISTED_STATUSES,
    BatchPlan,
    JobChange,
    ListingKey,
    decode_cursor,
    decode_recorded,
    encode_cursor,
    fresh_events,
    index_for,
    index_names,
    plan_batch,
)
from .views import (
    EventLogEntry,
    JobFold,
    JobPage,
    JobSummary,
    Limits,
    LogLine,
    MetricPoint,
    QueueView,
    ReadModelSnapshot,
    RunnerSnapshot,
)

_encoder = msgspec.json.Encoder()


class _Index:
    """Job ids ordered by submission position, the memory twin of a Redis sorted set."""

    __slots__ = ("job_ids", "positions")

    def __init__(self) -> None:
        self.positions: list[int] = []
        self.job_ids: dict[int, str] = {}

    def add(self, position: int, job_id: str) -> None:
        if position not in self.job_ids:
            bisect.insort(self.positions, position)
        self.job_ids[position] = job_id

    def remove(self, position: int) -> None:
        if self.job_ids.pop(position, None) is not None:
            del self.positions[bisect.bisect_left(self.positions, position)]

    def newest_before(self, before: int | None, count: int) -> list[str]:
        end = len(self.positions) if before is None else bisect.bisect_left(self.positions, before)
        return [self.job_ids[p] for p in reversed(self.positions[max(0, end - count) : end])]


class MemoryReadModel:
    """Read models held in this process; gone when it exits (replay rebuilds them)."""

    def __init__(self, *, limits: Limits | None = None) -> None:
        self._limits = limits or Limits()
        self._reset(keep_feeds=False)

    def _reset(self, *, keep_feeds: bool) -> None:
        self._applied = 0
        self._processor = QueueProcessorState()
        self._folds: dict[str, JobFold] = {}
        self._jobs: dict[str, JobSummary] = {}
        self._indexes: dict[str, _Index] = {}
        self._events: dict[str, list[EventLogEntry]] = {}
        self._metrics: dict[str, list[MetricPoint]] = {}
        if not keep_feeds:
            self._logs: dict[str, list[LogLine]] = {}
            self._runners: dict[str, RunnerSnapshot] = {}
            self._queue = QueueView()

    async def close(self) -> None:
        return None

    # --- the projector's side -------------------------------------------------------------

    async def applied_position(self) -> int:
        return self._applied

    async def apply(self, event: RecordedEvent) -> bool:
        return await self.apply_many([event]) > 0

    async def apply_many(self, events: Sequence[RecordedEvent]) -> int:
        fresh = fresh_events(events, self._applied)
        if not fresh:
            return 0
        plan = plan_batch(
            [decode_recorded(r) for r in fresh],
            folds=self._folds,
            processor=self._processor,
            limits=self._limits,
        )
        self._persist(plan)
        return plan.count

    def _persist(self, plan: BatchPlan) -> None:
        for change in plan.jobs.values():
            self._persist_job(change)
        if plan.processor is not None:
            self._processor = plan.processor
        self._applied = plan.applied

    def _persist_job(self, change: JobChange) -> None:
        job_id, limits = change.job_id, self._limits
        if change.reset:
            self._events.pop(job_id, None)
            self._metrics.pop(job_id, None)
            self._logs.pop(job_id, None)
        before, after = change.before, change.after
        if before != after:
            if before is not None:
                self._unindex(before)
            if after is not None:
                for name in index_names(after):
                    self._indexes.setdefault(name, _Index()).add(after.position, job_id)
        summary = change.summary
        if summary is None:
            self._jobs.pop(job_id, None)
        else:
            self._jobs[job_id] = summary
        self._folds[job_id] = change.fold
        if change.events:
            entries = self._events.setdefault(job_id, [])
            entries.extend(change.events)
            del entries[: -limits.events_per_job]
        if change.metrics:
            points = self._metrics.setdefault(job_id, [])
            points.extend(change.metrics)
            del points[: -limits.metric_points]

    def _unindex(self, key: ListingKey) -> None:
        for name in index_names(key):
            index = self._indexes[name]
            index.remove(key.position)
            if not index.positions:
                del self._indexes[name]

    async def wipe(self, *, keep_feeds: bool = False) -> None:
        self._reset(keep_feeds=keep_feeds)

    async def snapshot(self) -> ReadModelSnapshot:
        return ReadModelSnapshot(
            applied_position=self._applied,
            processor=self._processor,
            jobs=dict(sorted(self._jobs.items())),
            folds=dict(sorted(self._folds.items())),
            indexes={
                name: [(index.job_ids[p], p) for p in index.positions]
                for name, index in sorted(self._indexes.items())
            },
            events={k: list(v) for k, v in sorted(self._events.items())},
            metrics={k: list(v) for k, v in sorted(self._metrics.items())},
        )

    # --- jobs -----------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobSummary | None:
        return self._jobs.get(job_id)

    async def get_jobs(self, job_ids: Sequence[str]) -> list[JobSummary | None]:
        return [self._jobs.get(job_id) for job_id in job_ids]

    async def get_job_json(self, job_id: str) -> bytes | None:
        summary = self._jobs.get(job_id)
        return None if summary is None else _encoder.encode(summary)

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        priority: int | None = None,
        cursor: str | None = None,
        limit: int = 50,
        owner: str | None = None,
    ) -> JobPage:
        check_limit(limit)
        before = None if cursor is None else decode_cursor(cursor)
        index = self._indexes.get(index_for(status, priority, owner))
        if index is None:
            return JobPage(items=[])
        ids = index.newest_before(before, limit + 1)
        items = [self._jobs[job_id] for job_id in ids[:limit]]
        more = len(ids) > limit
        return JobPage(items=items, next_cursor=_next_cursor(items) if more else None)

    async def count_by_status(self) -> dict[JobStatus, int]:
        counts: dict[JobStatus, int] = {}
        for status in LISTED_STATUSES:
            index = self._indexes.get(index_for(status, None))
            counts[status] = 0 if index is None else len(index.positions)
        return counts

    async def job_events(
        self,
        job_id: str,
        *,
        after: int = 0,
        limit: int = 100,
    ) -> list[EventLogEntry]:
        check_limit(limit)
        entries = self._events.get(job_id, [])
        start = bisect.bisect_right(entries, after, key=lambda x: x.position)
        return entries[start : start + limit]

    async def metric_history(self, job_id: str) -> list[MetricPoint]:
        return list(self._metrics.get(job_id, []))

    # --- runner- and scheduler-fed views --------------------------------------------------

    async def append_logs(self, job_id: str, lines: Sequence[LogLine]) -> int:
        stored = self._logs.get(job_id, [])
        high = stored[-1].seq if stored else -1
        fresh: list[LogLine] = []
        late = 0
        for line in sorted(lines, key=lambda x: x.seq):
            if line.seq > high:
                fresh.append(line)
                high = line.seq
                continue
            at = bisect.bisect_left(stored, line.seq, key=lambda x: x.seq)
            if at == len(stored) or stored[at].seq != line.seq:
                # A line another rank's runner read a moment earlier: kept in its place.
                stored.insert(at, line)
                late += 1
        if fresh or late:
            stored.extend(fresh)
            del stored[: -self._limits.log_lines]
            self._logs[job_id] = stored
        return len(fresh) + late

    async def logs(
        self,
        job_id: str,
        *,
        after: int | None = None,
        limit: int = 50,
    ) -> list[LogLine]:
        check_limit(limit)
        stored = self._logs.get(job_id, [])
        if after is None:
            return stored[-limit:]
        start = bisect.bisect_right(stored, after, key=lambda x: x.seq)
        return stored[start : start + limit]

    async def put_runner_snapshot(self, runner_id: str, data: bytes, seen_at: datetime) -> bool:
        if seen_at.tzinfo is None:
            raise ValueError("timestamps must carry a timezone")
        seen_at = seen_at.astimezone(UTC)
        current = self._runners.get(runner_id)
        if current is not None and current.seen_at > seen_at:
            return False
        self._runners[runner_id] = RunnerSnapshot(runner_id, seen_at, bytes(data))
        return True

    async def remove_runner(self, runner_id: str) -> None:
        self._runners.pop(runner_id, None)

    async def runner_snapshots(self) -> list[RunnerSnapshot]:
        return [self._runners[k] for k in sorted(self._runners)]

    async def set_queue_view(self, view: QueueView) -> None:
        self._queue = view

    async def queue_view(self) -> QueueView:
        return self._queue

    async def processor_state(self) -> QueueProcessorState:
        return self._processor


def _next_cursor(items: list[JobSummary]) -> str | None:
    return encode_cursor(items[-1].submitted_position) if items else None
