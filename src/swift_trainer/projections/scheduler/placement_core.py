"""The scheduler's pure core: queue, GPU occupancy and placement, kept incrementally.

``Scheduler`` holds what a placement needs and updates it in place as the event stream and
the runners report, so that one decision costs what it changes rather than a rescan of the
queue and the cluster. It performs no I/O and reads no clock: its service shell feeds it
events and runner reports, calls ``place`` and turns each ``Decision`` into a
``ScheduleJob`` command. ``place_jobs`` is the same computation from scratch, from plain
snapshots, for a rebuild or a one-off answer; both must always agree.

The policy (order, eligibility, gangs, choice, reservation and backfill, unplaceable jobs)
is documented in ``placement``, wait estimates in ``wait_estimate``, and which GPUs a job
gets in ``gpu_choice``.

Times: a running job's ``remaining_s`` is read as "seconds from now" at every pass, so the
shell should pass on swift's progress reports as they come (``set_remaining``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

import msgspec

from .gpu_snapshots import HostSnapshot, RunningJob
from .job_queue import JobQueue, QueuedJob
from .occupancy import INFINITY, Occupancy
from .owner_usage import OwnerUsage
from .placement import (
    Decision,
    PlacementPolicy,
    Reservation,
    Unplaceable,
    place_pass,
    unplaceable_reason,
)
from .wait_estimate import QueueSlot, queue_entries


class Placement(msgspec.Struct, frozen=True, kw_only=True):
    """The decisions of one pass, in queue order, and the blocked head's reservation."""

    decisions: tuple[Decision, ...]
    reservation: Reservation | None = None


class PlacementPass(msgspec.Struct, frozen=True, kw_only=True):
    """A full pass: decisions, reservations, unplaceable jobs, and the queue after it."""

    decisions: tuple[Decision, ...]
    reservations: tuple[Reservation, ...]
    unplaceable: tuple[Unplaceable, ...]
    queue: tuple[QueueSlot, ...]


class Scheduler:
    """Queue, inventory and assignments of one scheduler, with placement on demand.

    A decision is applied at once: the job leaves the queue and holds its GPUs, so the next
    pass cannot hand them out again before the ``JobScheduled`` event comes back. If the
    command is refused, the shell ``release``s the job and ``submit``s it again as the events
    say.
    """

    __slots__ = ("_hosts", "_occupancy", "_queue", "_running", "_usage", "policy")

    def __init__(self, policy: PlacementPolicy | None = None) -> None:
        self.policy = policy or PlacementPolicy()
        self._queue = JobQueue()
        self._occupancy = Occupancy(self.policy.foreign_memory_threshold_mib)
        self._hosts: dict[str, HostSnapshot] = {}
        self._running: dict[str, RunningJob] = {}
        self._usage = OwnerUsage()

    # --- the queue ----------------------------------------------------------------------

    def submit(self, job: QueuedJob) -> None:
        """Queue a job, or update it; a queued job holds no GPUs, so any it held are freed."""
        self.release(job.job_id)
        self._queue.add(job)

    def submit_many(self, jobs: Iterable[QueuedJob]) -> None:
        """``submit`` for a whole replay at once, sorting each lane once."""
        jobs = list(jobs)
        for job in jobs:
            self.release(job.job_id)
        self._queue.extend(jobs)

    def remove(self, job_id: str) -> QueuedJob | None:
        """Take a job out of the queue (held, stopped, deleted); None if it was not queued."""
        return self._queue.remove(job_id)

    def change_priority(self, job_id: str, priority: int) -> bool:
        return self._queue.change_priority(job_id, priority)

    def queued_job(self, job_id: str) -> QueuedJob | None:
        return self._queue.get(job_id)

    def position(self, job_id: str) -> int | None:
        return self._queue.position(job_id)

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def queued_jobs(self) -> list[QueuedJob]:
        """All queued jobs in queue order."""
        return list(self._queue.ordered())

    # --- the inventory ------------------------------------------------------------------

    def update_host(self, host: HostSnapshot) -> None:
        """Take a runner's latest report; ``alive=False`` takes its GPUs out of placement."""
        self._hosts[host.runner_id] = host
        self._occupancy.set_host(host)

    def remove_host(self, runner_id: str) -> None:
        self._hosts.pop(runner_id, None)
        self._occupancy.drop_host(runner_id)

    def expire_leases(self, now: datetime) -> tuple[str, ...]:
        """Mark runners whose lease ran out at ``now`` dead; returns their ids, in order.

        Their jobs keep their GPUs here until the shell has recorded them lost
        (``jobs_on``, then ``MarkLost`` and ``release``).
        """
        expired = []
        for runner_id, host in sorted(self._hosts.items()):
            if host.alive and not host.is_live(now):
                self.update_host(msgspec.structs.replace(host, alive=False))
                expired.append(runner_id)
        return tuple(expired)

    def host(self, runner_id: str) -> HostSnapshot | None:
        return self._hosts.get(runner_id)

    def jobs_on(self, runner_id: str) -> tuple[str, ...]:
        return tuple(self._occupancy.jobs_on(runner_id))

    # --- owners -------------------------------------------------------------------------

    def set_quota(self, owner: str, max_gpus: int | None) -> None:
        """An owner's ``max_gpus`` (``None``: no limit), in force from the next pass."""
        self._usage.set_quota(owner, max_gpus)

    def gpus_in_use(self, owner: str | None) -> int:
        return self._usage.in_use(owner)

    # --- running jobs -------------------------------------------------------------------

    def assign(self, job: RunningJob) -> None:
        """Record a job holding GPUs (scheduled, running, stopping); it leaves the queue."""
        self._queue.remove(job.job_id)
        self._running[job.job_id] = job
        ends_at = _ends_at(job.remaining_s)
        if job.peers:
            hosts = (
                (job.runner_id, job.gpu_ids),
                *((peer.runner_id, peer.gpu_ids) for peer in job.peers),
            )
            self._occupancy.hold_gang(job.job_id, hosts, ends_at)
        else:
            self._occupancy.hold(job.job_id, job.runner_id, job.gpu_ids, ends_at)
        held = len(job.gpu_ids) + sum(len(peer.gpu_ids) for peer in job.peers)
        self._usage.hold(job.job_id, job.owner, held)

    def release(self, job_id: str) -> RunningJob | None:
        """The job let go of its GPUs (finished, stopped, lost, refused)."""
        self._occupancy.release(job_id)
        self._usage.release(job_id)
        return self._running.pop(job_id, None)

    def set_remaining(self, job_id: str, remaining_s: float | None) -> None:
        job = self._running.get(job_id)
        if job is not None:
            self._running[job_id] = msgspec.structs.replace(job, remaining_s=remaining_s)
            self._occupancy.set_end(job_id, _ends_at(remaining_s))

    def running_job(self, job_id: str) -> RunningJob | None:
        return self._running.get(job_id)

    def running_jobs(self) -> list[RunningJob]:
        return [self._running[job_id] for job_id in sorted(self._running)]

    # --- decisions ----------------------------------------------------------------------

    def place(self) -> Placement:
        """Place what can be placed now, and apply it."""
        queue = self._queue
        outcome = place_pass(
            self._occupancy,
            queue.lanes,
            queue.job,
            usage=self._usage,
            backfill=self.policy.backfill,
        )
        for decision in outcome.decisions:
            job = queue.get(decision.job_id)
            assert job is not None
            self._running[job.job_id] = RunningJob(
                job_id=job.job_id,
                runner_id=decision.runner_id,
                gpu_ids=decision.gpu_ids,
                remaining_s=job.expected_duration_s,
                priority=job.priority,
                owner=job.owner,
                peers=decision.peers,
            )
        for lane, count in outcome.placed_per_lane.items():
            queue.drop_front(lane, count)
        return Placement(decisions=outcome.decisions, reservation=outcome.reservation)

    def unplaceable(self) -> tuple[Unplaceable, ...]:
        """Queued jobs no live host can ever take, in queue order, with the reason."""
        found = []
        for job in self._queue.ordered():
            reason = unplaceable_reason(self._occupancy, job.shape)
            if reason is not None:
                found.append(Unplaceable(job_id=job.job_id, reason=reason))
        return tuple(found)

    def report(self) -> tuple[QueueSlot, ...]:
        """Every queued job's position and estimated wait (see ``wait_estimate``)."""
        return queue_entries(
            self._occupancy,
            self._queue,
            self._usage,
            backfill=self.policy.backfill,
            limit=self.policy.estimate_limit,
        )


def place_jobs(
    queued: Iterable[QueuedJob],
    hosts: Iterable[HostSnapshot],
    running: Iterable[RunningJob] = (),
    policy: PlacementPolicy | None = None,
    *,
    now: datetime | None = None,
    max_gpus: Mapping[str, int] | None = None,
) -> PlacementPass:
    """One complete placement pass from snapshots.

    With ``now``, hosts past their lease count as dead; ``max_gpus`` are owners' quotas.
    The queue in the result is the queue after the decisions, with positions and wait
    estimates.
    """
    scheduler = Scheduler(policy)
    for owner, limit in (max_gpus or {}).items():
        scheduler.set_quota(owner, limit)
    for host in hosts:
        expired = now is not None and host.alive and not host.is_live(now)
        scheduler.update_host(msgspec.structs.replace(host, alive=False) if expired else host)
    for job in running:
        scheduler.assign(job)
    scheduler.submit_many(queued)
    placement = scheduler.place()
    entries = scheduler.report()
    return PlacementPass(
        decisions=placement.decisions,
        reservations=() if placement.reservation is None else (placement.reservation,),
        unplaceable=tuple(
            Unplaceable(job_id=entry.job_id, reason=entry.unplaceable)
            for entry in entries
            if entry.unplaceable is not None
        ),
        queue=entries,
    )


def _ends_at(remaining_s: float | None) -> float:
    return INFINITY if remaining_s is None else max(0.0, float(remaining_s))
