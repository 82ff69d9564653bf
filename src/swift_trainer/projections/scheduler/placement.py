"""One placement pass: which queued jobs start now, on which GPUs, and who waits for what.

The policy, precisely:

1. **Order.** Jobs are considered in queue order: priority 10 to 0; among jobs of equal
   priority, the owner with fewer GPUs in use first (fair share, counted at the moment of
   the decision: GPUs placed earlier in the same pass count), then first come first served
   (see ``job_queue``). Jobs without an owner share one (``None``).
2. **Eligibility** (rules in ``gpu_choice``). A job may use a GPU that is on a live runner,
   healthy, held by no job of ours, has less foreign memory (used by processes this system
   did not start) than ``foreign_memory_threshold_mib``, and meets the job's
   ``min_gpu_memory_gb`` (total memory, decimal GB) and ``gpu_name`` (case-insensitive
   substring).
3. **Gangs.** A job needing N GPUs gets N eligible GPUs of one host at once, or nothing.
4. **Choice.** Among hosts with N eligible GPUs, the one with the fewest (the tightest fit),
   ties to the lowest runner id; within it, the GPUs ``gpu_choice.select_gpus`` prefers (one
   NVLink group or PCIe switch for a gang when possible, then most free memory, then lowest
   utilisation, then lowest index).
5. **Owner quotas.** A job whose owner's GPUs in use plus its own would exceed the owner's
   ``max_gpus`` (``owner_usage``) is skipped: it waits in the queue, blocks no other owner
   and never reserves; it becomes placeable when its owner's jobs end or the quota is
   raised, at the next pass.
6. **Unplaceable jobs.** A job needing more matching GPUs than any live host has in total
   (counting busy GPUs but not unhealthy ones) could wait forever. It is skipped: it never
   blocks the queue and never reserves, and ``unplaceable_reason`` says why. It becomes
   placeable again by itself when a big enough host reports.
7. **Reservation (EASY backfilling).** The first job in that order that is placeable and
   within its owner's quota but does not fit now is the *head*. It reserves the N GPUs of
   the host where it will fit first, judged by the running jobs' remaining times
   (``Occupancy.plan_reservation``). Only the head reserves; jobs behind it may start on
   any other eligible GPUs (backfill), but never on the reserved ones, even if they would
   finish before the head could start. A reservation lasts one pass and is recomputed by
   the next, so it follows the latest remaining times. Backfill never touches the reserved
   host's reserved GPUs, so the head's expected start there can only come closer (unless
   swift revises a remaining time upwards); it moves elsewhere only when another host would
   start it even sooner. That is the guarantee against starvation. Ties (typically every
   candidate waiting on jobs of unknown length) are broken deterministically, so the same
   state reserves the same GPUs; a head that waits only on jobs of unknown length or on
   foreign processes still waits for as long as they run, with no estimate.
8. **Strict FIFO.** With ``backfill=False``, nothing behind a blocked head starts: the pass
   stops at the head (which still reports its reservation).
9. **Host labels and multi-node jobs.** A job with ``host_labels`` may use only the GPUs of
   runners carrying all those labels. A job of ``nodes`` N > 1 needs ``gpu_count`` GPUs on
   each of N distinct runners, all in one decision (``Decision.peers``) or none: the runners
   that share the most labels, then the tightest fit (``Occupancy.fit_gang``), and on each
   the GPUs ``select_gpus`` prefers. Blocked at the head, it reserves GPUs on N runners
   (the N whose GPUs free first), so backfill cannot starve it. It counts N x
   ``gpu_count`` GPUs against its owner's quota.

Because free GPUs only ever decrease during a pass, a job that does not fit proves that no
later job of the same constraints and at least as many GPUs fits either; the pass drops such
jobs without looking at them. Owners' GPUs in use only grow during a pass, so a job over its
owner's quota proves the same of the rest of its lane, and a lane's fair-share rank can only
fall: the merge re-ranks a lane's front lazily, when it comes up. That is what keeps the
work per pass proportional to what it places plus the number of lanes (job shapes times
owners), not to the queue length.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import msgspec

from swift_trainer.core.commands import ClaimGpus, ScheduleJob
from swift_trainer.core.gang import RankPlacement

from .gpu_choice import Requirement, describe_requirement
from .job_queue import Lane, OrderKey, QueuedJob, Shape
from .occupancy import INFINITY, GangHosts, Occupancy
from .owner_usage import OwnerUsage
from .preemption import PreemptionPlan, PreemptionPolicy

if TYPE_CHECKING:
    from .wait_estimate import QueueSlot

DEFAULT_FOREIGN_MEMORY_THRESHOLD_MIB = 1024
DEFAULT_ESTIMATE_LIMIT = 1000


class PlacementPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Operator settings. ``backfill=False`` is strict FIFO."""

    backfill: bool = True
    #: A GPU whose foreign processes hold this much memory or more counts as busy; the
    #: default leaves room for a display server or a monitoring agent.
    foreign_memory_threshold_mib: int = DEFAULT_FOREIGN_MEMORY_THRESHOLD_MIB
    #: Only the first this many queued jobs get a simulated wait estimate.
    estimate_limit: int = DEFAULT_ESTIMATE_LIMIT
    #: Whether and how a queued job may preempt running jobs of lower priority.
    preemption: PreemptionPolicy = PreemptionPolicy()


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """Start ``job_id`` on these GPUs; ``attempt`` is the job's next attempt."""

    job_id: str
    attempt: int
    runner_id: str
    gpu_ids: tuple[int, ...]
    gpu_uuids: tuple[str, ...]
    #: A multi-node job's ranks past rank 0, placed with it.
    peers: tuple[RankPlacement, ...] = ()

    def claim_command(self) -> ClaimGpus:
        """The ledger claim that must be accepted before ``to_command`` is sent."""
        return ClaimGpus(
            job_id=self.job_id,
            attempt=self.attempt,
            runner_id=self.runner_id,
            gpu_ids=self.gpu_ids,
            peers=self.peers,
        )

    def to_command(self) -> ScheduleJob:
        return ScheduleJob(
            job_id=self.job_id,
            attempt=self.attempt,
            runner_id=self.runner_id,
            gpu_ids=self.gpu_ids,
            gpu_uuids=self.gpu_uuids,
            peers=self.peers,
        )


class Reservation(msgspec.Struct, frozen=True, kw_only=True):
    """GPUs held back for the blocked head of the queue.

    ``expected_start_s`` is seconds from the pass, or ``None`` when it waits on a job of
    unknown length or on a foreign process.
    """

    job_id: str
    runner_id: str
    gpu_ids: tuple[int, ...]
    expected_start_s: float | None
    #: A multi-node job's other ranks' runners and GPUs, reserved with rank 0's.
    peers: tuple[RankPlacement, ...] = ()


class Unplaceable(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    reason: str


class PlacementPass(msgspec.Struct, frozen=True, kw_only=True):
    """What one placement pass decided, the one result type of every pass.

    ``decisions`` come in the order taken; ``reservation`` is the blocked head's, if any;
    ``placed_per_lane`` counts the jobs placed from each lane (always a prefix). A pass
    from snapshots (``place_jobs``) also lists the unplaceable jobs and the queue after it.
    """

    decisions: tuple[Decision, ...]
    reservation: Reservation | None = None
    placed_per_lane: dict[Lane, int] = {}
    unplaceable: tuple[Unplaceable, ...] = ()
    queue: tuple[QueueSlot, ...] = ()
    #: Preemptions decided in this pass: the shell asks each victim to stop.
    preemptions: tuple[PreemptionPlan, ...] = ()

    @property
    def reservations(self) -> tuple[Reservation, ...]:
        """The reservation as a tuple: empty, or the blocked head's."""
        return () if self.reservation is None else (self.reservation,)


def unplaceable_reason(occupancy: Occupancy, shape: Shape) -> str | None:
    """Why a job of this shape can never start on the live hosts, or None if it can."""
    count, requirement = shape
    capacity = occupancy.capacity(requirement)
    if count <= capacity:
        return None
    what = describe_requirement(requirement)
    nodes = requirement.nodes
    if nodes > 1:
        return (
            f"needs {nodes} runners with {count} GPU{'s' if count > 1 else ''}{what} each, "
            f"but fewer live runners have that many; the job waits until enough report"
        )
    if capacity == 0:
        return f"no live runner has a healthy GPU{what}"
    plural = "s" if count > 1 else ""
    return (
        f"needs {count} GPU{plural}{what} on one runner, but the largest live runner has "
        f"{capacity}; the job waits until a runner that big reports"
    )


def place_pass(
    occupancy: Occupancy,
    lanes: Mapping[Lane, Sequence[OrderKey]],
    job_of: Callable[[OrderKey], QueuedJob],
    *,
    usage: OwnerUsage | None = None,
    backfill: bool = True,
    now: float = 0.0,
    starts: Mapping[Lane, int] | None = None,
    report_reservation: bool = True,
    screened: bool = False,
    fronts: Sequence[LaneFront] | None = None,
) -> PlacementPass:
    """Run one pass over ``lanes`` (from ``starts`` on), holding the chosen GPUs in
    ``occupancy`` and counting them to their owners in ``usage``.

    Decided jobs hold their GPUs until ``now + expected_duration_s`` (forever when
    unknown); the caller removes them from its queue using ``placed_per_lane``. With
    ``report_reservation=False`` (a simulation, which only wants the decisions) the head
    reserves only when a job behind it could still start, the one case where the
    reservation changes a decision: planning it is most of the cost of a pass that places
    nothing. ``screened`` says that ``lanes`` hold no job that could never start (too big
    for every host or for its owner's whole quota), so the pass need not check. ``fronts``:
    every lane's first job as ``lane_front`` ranks it now, kept by a caller that runs many
    passes (a simulation re-ranks only the lanes whose owner's GPUs changed).
    """
    usage = OwnerUsage() if usage is None else usage
    cursors = _lane_fronts(occupancy, lanes, usage, starts or {}, screened=screened, fronts=fronts)
    decisions: list[Decision] = []
    placed: dict[Lane, int] = {}
    smallest_failed: dict[Requirement, int] = {}
    reservation: Reservation | None = None
    while cursors:
        priority, ranked_at, seq, job_id, lane_key, index = cursors[0]
        shape, owner = lane_key
        in_use = usage.in_use(owner)
        if in_use != ranked_at:  # the owner got GPUs since: rank the lane again
            heapq.heapreplace(cursors, (priority, in_use, seq, job_id, lane_key, index))
            continue
        count, requirement = shape
        gpus = count * requirement.nodes
        if count >= smallest_failed.get(requirement, math.inf):
            heapq.heappop(cursors)  # a job as small with the same needs did not fit
            continue
        if usage.over_quota(owner, gpus):
            heapq.heappop(cursors)  # waits for its owner's GPUs, reserving nothing
            continue
        lane = lanes[lane_key]
        hosts = _fit(occupancy, count, requirement)
        if hosts is None:
            heapq.heappop(cursors)
            smallest_failed[requirement] = count
            if reservation is None:
                if report_reservation or (backfill and occupancy.total_free):
                    reservation = _reserve(occupancy, job_of(lane[index]), shape, now)
                if not backfill:
                    break
            if not occupancy.total_free:
                break
            continue
        job = job_of(lane[index])
        decisions.append(_start_on(occupancy, job, hosts, requirement, now))
        usage.hold(job.job_id, owner, gpus)
        index += 1
        placed[lane_key] = index
        if index < len(lane):
            priority, seq, job_id = lane[index]
            heapq.heapreplace(
                cursors, (priority, usage.in_use(owner), seq, job_id, lane_key, index)
            )
        else:
            heapq.heappop(cursors)
    if reservation is not None:
        occupancy.unreserve(reservation.runner_id)
        for peer in reservation.peers:
            occupancy.unreserve(peer.runner_id)
    return PlacementPass(
        decisions=tuple(decisions), reservation=reservation, placed_per_lane=placed
    )


#: ``(-priority, the owner's GPUs in use when ranked, seq, job id, lane, index in the lane)``
LaneFront = tuple[int, int, int, str, Lane, int]
_Cursor = LaneFront


def lane_front(lane_key: Lane, lane: Sequence[OrderKey], usage: OwnerUsage) -> LaneFront:
    """The first job of a lane, ranked by its owner's GPUs in use now."""
    priority, seq, job_id = lane[0]
    return (priority, usage.in_use(lane_key[1]), seq, job_id, lane_key, 0)


def _lane_fronts(
    occupancy: Occupancy,
    lanes: Mapping[Lane, Sequence[OrderKey]],
    usage: OwnerUsage,
    starts: Mapping[Lane, int],
    *,
    screened: bool,
    fronts: Sequence[LaneFront] | None,
) -> list[_Cursor]:
    """The first job of every lane that could ever start, as a heap in fair-share order.

    ``screened``: the caller has left out the lanes that can never start (a simulation,
    where hosts and quotas do not change, does it once rather than on every pass);
    ``fronts``: the caller has ranked them too.
    """
    if fronts is not None:
        cursors = list(fronts)
        heapq.heapify(cursors)
        return cursors
    cursors = []
    in_use = usage.in_use
    for lane_key, lane in lanes.items():
        start = starts.get(lane_key, 0) if starts else 0
        if start >= len(lane):
            continue
        (count, requirement), owner = lane_key
        if not screened and (
            count > occupancy.capacity(requirement)
            or usage.never_within_quota(owner, count * requirement.nodes)
        ):
            continue
        priority, seq, job_id = lane[start]
        cursors.append((priority, in_use(owner), seq, job_id, lane_key, start))
    heapq.heapify(cursors)
    return cursors


def _fit(occupancy: Occupancy, count: int, requirement: Requirement) -> tuple[str, ...] | None:
    """The runners a job of this shape takes now (one per node), or None."""
    if occupancy.total_free < count * requirement.nodes or count > occupancy.max_free():
        return None
    if requirement.nodes > 1:
        return occupancy.fit_gang(count, requirement)
    runner_id = occupancy.fit_host(count, requirement)
    return None if runner_id is None else (runner_id,)


def _start_on(
    occupancy: Occupancy,
    job: QueuedJob,
    hosts: tuple[str, ...],
    requirement: Requirement,
    now: float,
) -> Decision:
    if len(hosts) > 1:
        return _start_gang(occupancy, job, hosts, requirement, now)
    return _start(occupancy, job, hosts[0], requirement, now)


def _start(
    occupancy: Occupancy, job: QueuedJob, runner_id: str, requirement: Requirement, now: float
) -> Decision:
    """Hold the GPUs ``job`` gets on ``runner_id`` until its expected end."""
    gpu_ids = occupancy.choose_gpus(runner_id, job.gpu_count, requirement)
    duration = job.expected_duration_s
    ends_at = INFINITY if duration is None else now + float(duration)
    occupancy.hold(job.job_id, runner_id, gpu_ids, ends_at)
    return Decision(
        job_id=job.job_id,
        attempt=job.attempt + 1,
        runner_id=runner_id,
        gpu_ids=gpu_ids,
        gpu_uuids=tuple(occupancy.gpu(runner_id, i).uuid for i in gpu_ids),
    )


def _start_gang(
    occupancy: Occupancy,
    job: QueuedJob,
    runner_ids: tuple[str, ...],
    requirement: Requirement,
    now: float,
) -> Decision:
    """Hold ``gpu_count`` GPUs on each of ``runner_ids`` for a multi-node job, all at once."""
    hosts: GangHosts = tuple(
        (runner_id, occupancy.choose_gpus(runner_id, job.gpu_count, requirement))
        for runner_id in runner_ids
    )
    duration = job.expected_duration_s
    occupancy.hold_gang(job.job_id, hosts, INFINITY if duration is None else now + duration)
    (head, head_gpus), rest = hosts[0], hosts[1:]
    return Decision(
        job_id=job.job_id,
        attempt=job.attempt + 1,
        runner_id=head,
        gpu_ids=head_gpus,
        gpu_uuids=tuple(occupancy.gpu(head, i).uuid for i in head_gpus),
        peers=tuple(
            RankPlacement(
                rank=rank,
                runner_id=runner_id,
                gpu_ids=gpu_ids,
                gpu_uuids=tuple(occupancy.gpu(runner_id, i).uuid for i in gpu_ids),
            )
            for rank, (runner_id, gpu_ids) in enumerate(rest, start=1)
        ),
    )


def _reserve_gang(
    occupancy: Occupancy, job: QueuedJob, shape: Shape, now: float
) -> Reservation | None:
    plan = occupancy.plan_gang_reservation(shape[0], shape[1], now)
    if plan is None:  # pragma: no cover - placeable shapes always have enough hosts
        return None
    hosts, start = plan
    for runner_id, gpu_ids in hosts:
        occupancy.reserve(runner_id, gpu_ids)
    (head, head_gpus), rest = hosts[0], hosts[1:]
    return Reservation(
        job_id=job.job_id,
        runner_id=head,
        gpu_ids=head_gpus,
        expected_start_s=None if math.isinf(start) else start - now,
        peers=tuple(
            RankPlacement(rank=rank, runner_id=runner_id, gpu_ids=gpu_ids)
            for rank, (runner_id, gpu_ids) in enumerate(rest, start=1)
        ),
    )


def _reserve(occupancy: Occupancy, job: QueuedJob, shape: Shape, now: float) -> Reservation | None:
    if shape[1][3] > 1:
        return _reserve_gang(occupancy, job, shape, now)
    plan = occupancy.plan_reservation(shape[0], shape[1], now)
    if plan is None:  # pragma: no cover - placeable shapes always have a host
        return None
    runner_id, gpu_ids, start = plan
    occupancy.reserve(runner_id, gpu_ids)
    return Reservation(
        job_id=job.job_id,
        runner_id=runner_id,
        gpu_ids=gpu_ids,
        expected_start_s=None if math.isinf(start) else start - now,
    )
