"""The priority queue of jobs waiting for GPUs.

Order is ``(-priority, seq)``: higher priority first, then first come first served by
``seq``, a number the caller takes from the event log (the global position of the job's
``JobQueued`` event), never from a wall clock, so a replay orders jobs exactly as the live
system did. A priority change moves the job but keeps its ``seq``: among equals it keeps the
place its submission earned.

Jobs are kept in one sorted *lane* per shape (GPU count and constraints) and owner. A
placement pass walks the lanes merged in queue order (with fair share among owners, see
``placement``) and drops a whole lane the first time one of its jobs does not fit or its
owner is at its GPU quota: every later job of that lane needs the same GPUs for the same
owner and cannot start either. That is what keeps a pass over a long queue proportional to
what it places, not to the queue length.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice

import msgspec

from .gpu_choice import Requirement, requirement_of

#: ``(gpu_count, requirement)``: jobs of one shape compete for exactly the same GPUs.
Shape = tuple[int, Requirement]
#: ``(shape, owner)``: jobs of one lane are interchangeable for placement but for their order.
Lane = tuple[Shape, str | None]
#: ``(-priority, seq, job_id)``: sorts in queue order; the id only breaks ties of bad input.
OrderKey = tuple[int, int, str]


class QueuedJob(msgspec.Struct, frozen=True, kw_only=True):
    """A job waiting for GPUs, as much of it as placement needs.

    ``attempt`` is the job's current attempt (the placement proposes the next one);
    ``expected_duration_s`` feeds the wait estimates of the jobs behind it, ``None`` meaning
    unknown. ``owner`` is the API key owner who submitted it (``None``: no owner), for
    quotas and fair share.
    """

    job_id: str
    priority: int
    seq: int
    gpu_count: int = 1
    min_gpu_memory_gb: float | None = None
    gpu_name: str | None = None
    attempt: int = 0
    expected_duration_s: float | None = None
    owner: str | None = None
    #: GPUs (by UUID) that failed this job before: placement avoids them.
    excluded_gpus: tuple[str, ...] = ()
    #: Runners it spans (``gpu_count`` GPUs on each) and the labels they must carry.
    nodes: int = 1
    host_labels: dict[str, str] = {}

    @property
    def shape(self) -> Shape:
        requirement = requirement_of(
            self.min_gpu_memory_gb,
            self.gpu_name,
            self.host_labels,
            self.nodes,
            self.excluded_gpus,
        )
        return (self.gpu_count, requirement)

    @property
    def lane(self) -> Lane:
        return (self.shape, self.owner)

    @property
    def order_key(self) -> OrderKey:
        return (-self.priority, self.seq, self.job_id)


class JobQueue:
    """Queued jobs in queue order, cheap to add to, remove from and reorder.

    Every operation is a binary search plus a list insertion or deletion in one lane, so
    O(log n) comparisons and a memmove; no third-party sorted container is needed.
    """

    __slots__ = ("_jobs", "_lanes")

    def __init__(self) -> None:
        self._jobs: dict[str, tuple[QueuedJob, OrderKey, Lane]] = {}
        self._lanes: dict[Lane, list[OrderKey]] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def get(self, job_id: str) -> QueuedJob | None:
        entry = self._jobs.get(job_id)
        return entry[0] if entry else None

    def add(self, job: QueuedJob) -> None:
        """Queue a job; queueing a job id again replaces the earlier entry."""
        self.remove(job.job_id)
        key, lane_key = job.order_key, job.lane
        self._jobs[job.job_id] = (job, key, lane_key)
        lane = self._lanes.get(lane_key)
        if lane is None:
            self._lanes[lane_key] = [key]
        elif key > lane[-1]:
            lane.append(key)  # the usual case: a new job joins the back of its lane
        else:
            insort(lane, key)

    def extend(self, jobs: Iterable[QueuedJob]) -> None:
        """Queue many jobs at once: one sort per lane instead of one insertion per job."""
        known: dict[tuple[object, ...], Lane] = {}
        for job in jobs:
            # Few distinct lanes among many jobs: normalise each set of constraints once.
            raw = (
                job.gpu_count,
                job.min_gpu_memory_gb,
                job.gpu_name,
                job.owner,
                job.nodes,
                tuple(sorted(job.host_labels.items())),
                job.excluded_gpus,
            )
            lane_key = known.get(raw)
            if lane_key is None:
                lane_key = known[raw] = job.lane
            self._jobs[job.job_id] = (job, (-job.priority, job.seq, job.job_id), lane_key)
        lanes: dict[Lane, list[OrderKey]] = {}
        for _, key, lane_key in self._jobs.values():
            lanes.setdefault(lane_key, []).append(key)
        for lane in lanes.values():
            lane.sort()
        self._lanes = lanes

    def remove(self, job_id: str) -> QueuedJob | None:
        entry = self._jobs.pop(job_id, None)
        if entry is None:
            return None
        job, key, lane_key = entry
        lane = self._lanes[lane_key]
        del lane[bisect_left(lane, key)]
        if not lane:
            del self._lanes[lane_key]
        return job

    def change_priority(self, job_id: str, priority: int) -> bool:
        """Move a job to its new priority, keeping its ``seq``; False if it is not queued."""
        job = self.get(job_id)
        if job is None:
            return False
        if job.priority != priority:
            self.add(msgspec.structs.replace(job, priority=priority))
        return True

    def position(self, job_id: str) -> int | None:
        """1-based place in queue order, in O(shapes * log n)."""
        entry = self._jobs.get(job_id)
        if entry is None:
            return None
        key = entry[1]
        return 1 + sum(bisect_left(lane, key) for lane in self._lanes.values())

    @property
    def lanes(self) -> Mapping[Lane, list[OrderKey]]:
        """The lanes themselves, for a placement pass to walk; callers must not modify them."""
        return self._lanes

    def job(self, key: OrderKey) -> QueuedJob:
        return self._jobs[key[2]][0]

    def drop_front(self, lane_key: Lane, count: int) -> None:
        """Remove the first ``count`` jobs of a lane: the ones a pass has just placed."""
        lane = self._lanes[lane_key]
        for key in lane[:count]:
            del self._jobs[key[2]]
        del lane[:count]
        if not lane:
            del self._lanes[lane_key]

    def ordered(self, limit: int | None = None) -> Iterator[QueuedJob]:
        """Jobs in queue order; the merge costs O(log shapes) per job."""
        for job, _, _ in self.ordered_entries(limit):
            yield job

    def ordered_entries(
        self, limit: int | None = None
    ) -> Iterator[tuple[QueuedJob, OrderKey, Lane]]:
        """``ordered`` with each job's order key and lane, as kept (not computed again)."""
        keys = heapq.merge(*self._lanes.values())
        jobs = self._jobs
        for key in keys if limit is None else islice(keys, limit):
            yield jobs[key[2]]
