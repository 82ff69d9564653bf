"""Queue positions and wait estimates by forward simulation of the placement policy.

The estimate replays the future as far as anyone knows it: running jobs end at their
``remaining_s``; at each end the same passes as the live scheduler place the queued jobs
(same order and fair share, quotas, gangs, reservation and backfill rules; an ending job
gives its owner's GPUs back); a job's estimated wait is the simulated
time of the pass that placed it. A job placed in the simulation ends after its own
``expected_duration_s`` or, when that is unknown, never frees its GPUs again, so jobs that
wait only on those GPUs get no estimate (``None``) rather than a made-up one.

The simulation covers the first ``limit`` jobs of the queue; the rest get a position but no
estimate, which keeps the cost bounded however long the queue grows.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import msgspec

from .job_queue import JobQueue, Lane, OrderKey, QueuedJob
from .occupancy import Occupancy
from .owner_usage import OWNER_GPU_QUOTA, OwnerUsage
from .placement import lane_front, place_pass, unplaceable_reason


class QueueSlot(msgspec.Struct, frozen=True, kw_only=True):
    """A queued job's place: ``estimated_wait_s`` is seconds from now, ``None`` if unknown."""

    job_id: str
    position: int
    priority: int
    gpu_count: int = 1
    estimated_wait_s: float | None = None
    #: Runners the job spans (``gpu_count`` GPUs on each).
    nodes: int = 1
    #: Set when no live host can ever take the job (see ``placement.unplaceable_reason``).
    unplaceable: str | None = None
    #: ``owner_gpu_quota`` when the owner's ``max_gpus`` keeps it waiting, with the reason.
    blocked_by: str | None = None
    blocked_reason: str | None = None


def estimate_waits(
    occupancy: Occupancy,
    queue: JobQueue,
    usage: OwnerUsage | None = None,
    *,
    backfill: bool = True,
    limit: int = 1000,
) -> dict[str, float]:
    """Simulated wait of each of the first ``limit`` queued jobs that gets placed at all."""
    owners = OwnerUsage() if usage is None else usage.clone()
    return _Simulation(occupancy.clone(), owners, queue, limit).run(backfill=backfill)


class _Simulation:
    """The future as far as it is known, one pass at each moment a job ends.

    Lanes that can never start (too big for any host or for the owner's whole quota) stay
    out; placed jobs leave their lane, and empty lanes leave the simulation. Lane fronts are
    ranked once, and again only when their lane moved or their owner's GPUs in use changed:
    most passes touch a few owners, not every lane.
    """

    def __init__(
        self, occupancy: Occupancy, owners: OwnerUsage, queue: JobQueue, limit: int
    ) -> None:
        self.occupancy = occupancy
        self.owners = owners
        self.jobs: dict[str, QueuedJob] = {}
        lanes: dict[Lane, list[OrderKey]] = {}
        for job, order_key, lane_key in queue.ordered_entries(limit):
            lanes.setdefault(lane_key, []).append(order_key)
            self.jobs[job.job_id] = job
        self.lanes = {k: lane for k, lane in lanes.items() if not _never(occupancy, owners, k)}
        self.fronts = {k: lane_front(k, lane, owners) for k, lane in self.lanes.items()}
        self.lanes_of: dict[str | None, list[Lane]] = {}
        for lane_key in self.lanes:
            self.lanes_of.setdefault(lane_key[1], []).append(lane_key)
        self.ends: list[tuple[float, str]] = []
        for job_id in occupancy.job_ids:
            self._note_end(job_id)
        heapq.heapify(self.ends)

    def run(self, *, backfill: bool) -> dict[str, float]:
        unplaced = sum(len(lane) for lane in self.lanes.values())
        job_of: Callable[[OrderKey], QueuedJob] = lambda key: self.jobs[key[2]]  # noqa: E731
        waits: dict[str, float] = {}
        now = 0.0
        while unplaced:
            outcome = place_pass(
                self.occupancy,
                self.lanes,
                job_of,
                usage=self.owners,
                backfill=backfill,
                now=now,
                report_reservation=False,
                screened=True,
                fronts=list(self.fronts.values()),
            )
            touched = self._advance_lanes(outcome.placed_per_lane)
            for decision in outcome.decisions:
                waits[decision.job_id] = now
                self._note_end(decision.job_id)
            unplaced -= len(outcome.decisions)
            if not self.ends:
                break
            now = self.ends[0][0]
            while self.ends and self.ends[0][0] == now:
                touched.add(self._release(heapq.heappop(self.ends)[1]))
            self._rank_again(touched)
        return waits

    def _note_end(self, job_id: str) -> None:
        ends_at = self.occupancy.ends_at(job_id)
        if ends_at is not None and not math.isinf(ends_at):
            heapq.heappush(self.ends, (ends_at, job_id))

    def _advance_lanes(self, placed_per_lane: dict[Lane, int]) -> set[str | None]:
        """Take placed jobs out of their lanes; returns the owners whose GPUs changed."""
        touched: set[str | None] = set()
        for lane_key, count in placed_per_lane.items():
            touched.add(lane_key[1])
            lane = self.lanes[lane_key]
            if count == len(lane):
                del self.lanes[lane_key], self.fronts[lane_key]
            else:
                del lane[:count]
        return touched

    def _release(self, job_id: str) -> str | None:
        """A job ends: its GPUs are free and its owner's again; returns the owner."""
        self.occupancy.release(job_id)
        holding = self.owners.holding(job_id)
        self.owners.release(job_id)
        return None if holding is None else holding[0]

    def _rank_again(self, owners: set[str | None]) -> None:
        for owner in owners:
            for lane_key in self.lanes_of.get(owner, ()):
                lane = self.lanes.get(lane_key)
                if lane is not None:
                    self.fronts[lane_key] = lane_front(lane_key, lane, self.owners)


def queue_entries(
    occupancy: Occupancy,
    queue: JobQueue,
    usage: OwnerUsage | None = None,
    *,
    backfill: bool = True,
    limit: int = 1000,
) -> tuple[QueueSlot, ...]:
    """Every queued job with its position, estimate and, if it cannot start now for good
    or for its owner's quota, the reason."""
    owners = OwnerUsage() if usage is None else usage
    waits = estimate_waits(occupancy, queue, owners, backfill=backfill, limit=limit)
    reasons: dict[Lane, tuple[str | None, str | None]] = {}
    entries = []
    for position, (job, _, lane) in enumerate(queue.ordered_entries(), start=1):
        why = reasons.get(lane)
        if why is None:
            why = reasons[lane] = (
                unplaceable_reason(occupancy, lane[0]),
                owners.quota_reason(job.owner, job.gpu_count * job.nodes),
            )
        unplaceable, quota = why
        entries.append(
            QueueSlot(
                job_id=job.job_id,
                position=position,
                priority=job.priority,
                gpu_count=job.gpu_count,
                nodes=job.nodes,
                estimated_wait_s=waits.get(job.job_id),
                unplaceable=unplaceable,
                blocked_by=None if quota is None else OWNER_GPU_QUOTA,
                blocked_reason=quota,
            ),
        )
    return tuple(entries)


def _never(occupancy: Occupancy, owners: OwnerUsage, lane: Lane) -> bool:
    (count, requirement), owner = lane
    gpus = count * requirement.nodes
    return count > occupancy.capacity(requirement) or owners.never_within_quota(owner, gpus)
