"""Bodies of the queue endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from ...core.job import JobStatus
from ...projections.scheduler.pass_result import PassResult


class ProcessorStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The queue processor (the scheduler's placing of queued jobs): running or paused."""

    state: Literal["running", "paused"]
    paused: bool
    reason: str
    changed_at: datetime | None = None


class ProcessorCommandResponse(msgspec.Struct, frozen=True, kw_only=True):
    state: Literal["running", "paused"]
    changed: bool
    message: str


class QueueEntryResponse(msgspec.Struct, frozen=True, kw_only=True):
    #: None for another owner's job when the caller is a ``user`` key (see Security).
    job_id: str | None
    #: 1 = next to start (priority, then submission; among equal priorities the scheduler
    #: starts first the owner with fewer GPUs in use, see Quotas).
    position: int
    priority: int
    #: GPUs the job needs on each host, all at once.
    gpu_count: int = 1
    #: Hosts the job spans (``gpu_count`` GPUs on each).
    nodes: int = 1
    estimated_start: datetime | None = None
    estimated_wait_s: float | None = None
    #: ``about 12 minutes`` or ``unknown``.
    estimated_wait_time: str
    #: Set when no known runner could ever run the job, with the reason.
    unplaceable: str | None = None
    #: ``owner_gpu_quota``: the job waits for its owner's ``max_gpus`` (its owner's jobs to
    #: end, or a higher quota), blocking no one. ``preempting``: jobs of lower priority are
    #: stopping with a checkpoint to make room for it (``blocked_reason`` says whom, where and
    #: by when; ``estimated_start`` is the end of their grace).
    blocked_by: str | None = None
    #: The limit and the GPUs in use; None for another owner's job when the caller is a
    #: ``user`` key (it names the owner).
    blocked_reason: str | None = None


class PendingQueueEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A queued job the scheduler has not ranked yet: no position until it has."""

    job_id: str
    priority: int


class QueueResponse(msgspec.Struct, frozen=True, kw_only=True):
    entries: list[QueueEntryResponse]
    #: Queued jobs recorded after the scheduler's last view (read model order: priority,
    #: then submission). They get a position in ``entries`` once the scheduler ranks them.
    pending: list[PendingQueueEntry] = []
    #: Queued jobs (the read model's count; the entries may lag it).
    length: int
    #: Held jobs: waiting for a start by hand, not in the queue.
    held: int
    #: ``scheduler``: its computed order and estimates; ``submission_order``: no scheduler
    #: has published a queue, so the entries follow priority, then submission (no estimates).
    source: Literal["scheduler", "submission_order"]
    computed_at: datetime | None = None
    #: The last event the scheduler had seen when it computed the queue.
    as_of_position: int = 0
    processor: ProcessorStatus


class QueueJobStatus(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    status: JobStatus
    in_queue: bool
    priority: int
    position: int | None = None
    estimated_start: datetime | None = None
    estimated_wait_s: float | None = None
    estimated_wait_time: str | None = None
    #: Where the position comes from: ``scheduler``, ``submission_order``; or why there is none
    #: yet: ``scheduler_pending`` (not ranked yet).
    source: str | None = None
    #: Set when no known runner could ever run the job, with the reason.
    unplaceable: str | None = None
    #: ``owner_gpu_quota`` while the job waits for its owner's ``max_gpus``; ``preempting``
    #: while jobs of lower priority stop to make room for it.
    blocked_by: str | None = None
    #: The limit and the GPUs in use.
    blocked_reason: str | None = None


class QueueRemoval(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    status: JobStatus | None
    message: str


#: The scheduler's answer, typed end to end (the same struct travels over NATS).
ProcessResult = PassResult
