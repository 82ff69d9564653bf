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
from .placement import place_pass, unplaceable_reason


class QueueSlot(msgspec.Struct, frozen=True, kw_only=True):
    """A queued job's place: ``estimated_wait_s`` is seconds from now, ``None`` if unknown."""

    job_id: str
    position: int
    priority: int
    gpu_count: int = 1
    estimated_wait_s: float | None = None
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
    simulated = occupancy.clone()
    owners = OwnerUsage() if usage is None else usage.clone()
    lanes: dict[Lane, list[OrderKey]] = {}
    jobs: dict[str, QueuedJob] = {}
    for job, key, lane_key in queue.ordered_entries(limit):
        lane = lanes.get(lane_key)
        if lane is None:
            lanes[lane_key] = [key]
        else:
            lane.append(key)
        jobs[job.job_id] = job
    # Lanes that can never start (too big for any host or for the owner's whole quota) stay
    # out of the simulation; placed jobs leave their lane, and empty lanes leave the pass.
    lanes = {key: lane for key, lane in lanes.items() if not _never(simulated, owners, key)}
    unplaced = sum(len(lane) for lane in lanes.values())
    ends: list[tuple[float, str]] = []
    for job_id in simulated.job_ids:
        ends_at = simulated.ends_at(job_id)
        if ends_at is not None and not math.isinf(ends_at):
            ends.append((ends_at, job_id))
    heapq.heapify(ends)
    job_of: Callable[[OrderKey], QueuedJob] = lambda key: jobs[key[2]]  # noqa: E731
    waits: dict[str, float] = {}
    now = 0.0
    while unplaced:
        outcome = place_pass(
            simulated,
            lanes,
            job_of,
            usage=owners,
            backfill=backfill,
            now=now,
            report_reservation=False,
            screened=True,
        )
        for lane_key, count in outcome.placed_per_lane.items():
            lane = lanes[lane_key]
            if count == len(lane):
                del lanes[lane_key]
            else:
                del lane[:count]
        for decision in outcome.decisions:
            waits[decision.job_id] = now
            ends_at = simulated.ends_at(decision.job_id)
            if ends_at is not None and not math.isinf(ends_at):
                heapq.heappush(ends, (ends_at, decision.job_id))
        unplaced -= len(outcome.decisions)
        if not ends:
            break
        now = ends[0][0]
        while ends and ends[0][0] == now:
            ended = heapq.heappop(ends)[1]
            simulated.release(ended)
            owners.release(ended)
    return waits


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
                owners.quota_reason(job.owner, job.gpu_count),
            )
        unplaceable, quota = why
        entries.append(
            QueueSlot(
                job_id=job.job_id,
                position=position,
                priority=job.priority,
                gpu_count=job.gpu_count,
                estimated_wait_s=waits.get(job.job_id),
                unplaceable=unplaceable,
                blocked_by=None if quota is None else OWNER_GPU_QUOTA,
                blocked_reason=quota,
            ),
        )
    return tuple(entries)


def _never(occupancy: Occupancy, owners: OwnerUsage, lane: Lane) -> bool:
    (count, requirement), owner = lane
    return count > occupancy.capacity(requirement) or owners.never_within_quota(owner, count)
