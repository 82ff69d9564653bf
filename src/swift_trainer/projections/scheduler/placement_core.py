"""The scheduler's pure core: queue, GPU occupancy and placement, kept incrementally.

``PlacementCore`` holds what a placement needs and updates it in place as the event stream and
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

import heapq
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Final

import msgspec

from swift_trainer.core.gang import RankPlacement

from .gpu_choice import ANY_GPU, Requirement
from .gpu_snapshots import HostSnapshot, RunningJob
from .job_queue import JobQueue, QueuedJob
from .occupancy import INFINITY, Occupancy, rank_key
from .owner_usage import OwnerUsage
from .placement import (
    Decision,
    PlacementPass,
    PlacementPolicy,
    Unplaceable,
    place_pass,
    unplaceable_reason,
)
from .preemption import (
    HostGpus,
    PreemptionPlan,
    SummaryCache,
    VictimFacts,
    Wait,
    find_preemption,
)
from .wait_estimate import QueueSlot, queue_entries

#: Key under which the GPUs freed for a preemptor are held until all of them are free;
#: ``/`` never occurs in a job id. A ``claim/`` key is a victim's ledger claim that
#: outlived its attempt (``state.claim_key``): it goes once the claim is released.
HOLD_PREFIX: Final = "preempt/"
_CLAIM_PREFIX: Final = "claim/"


class PlacementCore:
    """Queue, inventory and assignments of one scheduler, with placement on demand.

    A decision is applied at once: the job leaves the queue and holds its GPUs, so the next
    pass cannot hand them out again before the ``JobScheduled`` event comes back. If the
    command is refused, the shell ``release``s the job and ``submit``s it again as the events
    say.
    """

    __slots__ = (
        "_facts",
        "_hosts",
        "_occupancy",
        "_plans",
        "_queue",
        "_running",
        "_summaries",
        "_summary_stamps",
        "_usage",
        "_views",
        "policy",
    )

    def __init__(self, policy: PlacementPolicy | None = None) -> None:
        self.policy = policy or PlacementPolicy()
        self._queue = JobQueue()
        self._occupancy = Occupancy(self.policy.foreign_memory_threshold_mib)
        self._hosts: dict[str, HostSnapshot] = {}
        self._running: dict[str, RunningJob] = {}
        self._usage = OwnerUsage()
        #: Preemptions under way, by preemptor: their GPUs are held for it until free.
        self._plans: dict[str, PreemptionPlan] = {}
        #: What the preemption rules know of each job holding GPUs, as of the last pass.
        self._facts: dict[str, VictimFacts] = {}
        # Caches of the search, per host, valid while the host's layout stamp holds (and
        # the facts and plans of its jobs do not change).
        self._views: dict[str, tuple[int, HostGpus]] = {}
        self._summaries: SummaryCache = {}
        self._summary_stamps: dict[str, int] = {}

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
        self._drop_plan(job_id)
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

    def place(self) -> PlacementPass:
        """Place what can be placed now, and apply it; then, with preemption on, decide
        whom to preempt for the jobs that still fit nowhere (see ``preemption``)."""
        queue = self._queue
        from_plans = self._advance_plans()
        parked = [job for job in map(queue.remove, list(self._plans)) if job is not None]
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
        for job in parked:
            queue.add(job)
        plans = self._preempt()
        return msgspec.structs.replace(
            outcome, decisions=(*from_plans, *outcome.decisions), preemptions=plans
        )

    # --- preemption ---------------------------------------------------------------------

    def set_victim_facts(self, facts: Mapping[str, VictimFacts]) -> None:
        """The preemption rules' view of the jobs holding GPUs, for the next pass."""
        old, new = self._facts, dict(facts)
        for job_id in old.keys() | new.keys():
            before, after = old.get(job_id), new.get(job_id)
            if before is None or after is None or _verdict(before) != _verdict(after):
                held = self._occupancy.holding(job_id)
                if held is not None:
                    self._summaries.pop(held[0], None)
        self._facts = new

    def restore_plan(self, plan: PreemptionPlan) -> None:
        """A preemption the event log shows under way (after a restart or a takeover)."""
        if plan.job_id not in self._plans and plan.job_id in self._queue:
            self._plans[plan.job_id] = plan

    @property
    def plans(self) -> dict[str, PreemptionPlan]:
        """Preemptions under way, by preemptor."""
        return dict(self._plans)

    def _drop_plan(self, job_id: str) -> None:
        plan = self._plans.pop(job_id, None)
        if plan is not None:
            self._release_holds(plan)

    def _release_holds(self, plan: PreemptionPlan) -> None:
        """Let go of the GPUs held for a preemptor, on every host of its plan."""
        for rank, (runner_id, _) in enumerate(plan.hosts):
            self._occupancy.release(rank_key(HOLD_PREFIX + plan.job_id, rank))
            self._summaries.pop(runner_id, None)

    def _advance_plans(self) -> list[Decision]:
        """Start each preemptor whose GPUs are all free; hold the free ones of the rest.

        A plan ends when its preemptor leaves the queue, one of its hosts dies, or one of
        its GPUs is taken by anything but its victims (it is then searched for again).
        """
        occupancy, decisions = self._occupancy, []
        for job_id, plan in list(self._plans.items()):
            hold = HOLD_PREFIX + job_id
            job = self._queue.get(job_id)
            allowed = (
                plan.victim_ids
                | {_CLAIM_PREFIX + v for v in plan.victim_ids}
                | {rank_key(hold, rank) for rank in range(len(plan.hosts))}
            )
            broken = job is None or any(
                not occupancy.is_live(runner_id)
                or not frozenset(gpus) <= occupancy.usable_gpus(runner_id, job.shape[1])
                or any(not occupancy.holders_at(runner_id, i) <= allowed for i in gpus)
                for runner_id, gpus in plan.hosts
            )
            if broken:
                self._drop_plan(job_id)
                continue
            assert job is not None
            if not self._hold_free(plan):
                continue
            self._release_holds(plan)
            del self._plans[job_id]
            self._queue.remove(job_id)
            decisions.append(self._start_planned(job, plan))
        return decisions

    def _hold_free(self, plan: PreemptionPlan) -> bool:
        """Hold for the preemptor each of its GPUs that is free now; True once all are."""
        occupancy, hold = self._occupancy, HOLD_PREFIX + plan.job_id
        grown: list[tuple[str, str, frozenset[int]]] = []
        ready = True
        for rank, (runner_id, gpus) in enumerate(plan.hosts):
            key = rank_key(hold, rank)
            wanted = frozenset(gpus)
            held = occupancy.holding(key)
            mine = frozenset(held[1]) if held is not None else frozenset()
            newly = occupancy.free_gpus(runner_id) & wanted
            ready = ready and mine | newly == wanted
            if newly:
                grown.append((key, runner_id, mine | newly))
        if not ready:
            for key, runner_id, gpus_held in grown:
                occupancy.hold(key, runner_id, sorted(gpus_held), INFINITY)
        return ready

    def _start_planned(self, job: QueuedJob, plan: PreemptionPlan) -> Decision:
        """The preemptor's start on the GPUs its plan freed, every rank at once."""
        occupancy, job_id = self._occupancy, job.job_id
        duration = job.expected_duration_s
        if plan.peers:
            occupancy.hold_gang(job_id, plan.hosts, _ends_at(duration))
        else:
            occupancy.hold(job_id, plan.runner_id, plan.gpu_ids, _ends_at(duration))
        self._usage.hold(job_id, job.owner, sum(len(gpus) for _, gpus in plan.hosts))
        peers = tuple(
            RankPlacement(
                rank=rank,
                runner_id=runner_id,
                gpu_ids=gpus,
                gpu_uuids=tuple(occupancy.gpu(runner_id, i).uuid for i in gpus),
            )
            for rank, (runner_id, gpus) in enumerate(plan.peers, start=1)
        )
        self._running[job_id] = RunningJob(
            job_id=job_id,
            runner_id=plan.runner_id,
            gpu_ids=plan.gpu_ids,
            remaining_s=duration,
            priority=job.priority,
            owner=job.owner,
            peers=peers,
        )
        return Decision(
            job_id=job_id,
            attempt=job.attempt + 1,
            runner_id=plan.runner_id,
            gpu_ids=plan.gpu_ids,
            gpu_uuids=tuple(occupancy.gpu(plan.runner_id, i).uuid for i in plan.gpu_ids),
            peers=peers,
        )

    def _preempt(self) -> tuple[PreemptionPlan, ...]:
        """Plans for the queued jobs that fit nowhere now, in queue order.

        One search per lane at most fails: a later job of the lane has the same shape and
        owner and no higher priority, so it could preempt no one either. The walk stops at
        the first job whose priority is no higher than any eligible victim's. A job that
        waits for GPUs freeing soon on a host keeps that host out of the later searches of
        the pass, so no job after it plans on the GPUs it waits for.
        """
        if not self.policy.preemption.enabled:
            return ()
        facts = self._facts
        lowest = min((f.priority for f in facts.values() if f.eligible), default=None)
        if lowest is None:
            return ()
        queue, occupancy, usage = self._queue, self._occupancy, self._usage
        taken: set[str] = {v for plan in self._plans.values() for v in plan.victim_ids}
        summaries = self._valid_summaries()
        waited_on: set[str] = set()
        cursors = [(lane[0], lane_key, 0) for lane_key, lane in queue.lanes.items()]
        heapq.heapify(cursors)
        plans: list[PreemptionPlan] = []
        while cursors:
            key, lane_key, index = heapq.heappop(cursors)
            if -key[0] <= lowest:
                break
            lane = queue.lanes[lane_key]
            job = queue.job(key)
            (count, requirement), owner = lane_key
            found: PreemptionPlan | Wait | str | None = None
            if job.job_id in self._plans:
                found = "planned"
            elif (
                count <= occupancy.capacity(requirement)
                and not usage.over_quota(owner, count * requirement.nodes)
                and not self._fits_now(count, requirement)
            ):
                hosts = [
                    self._host_view(runner_id, requirement)
                    for runner_id in occupancy.runner_ids
                    if runner_id not in waited_on
                ]
                found = find_preemption(
                    job.job_id,
                    job.priority,
                    count,
                    hosts,
                    facts,
                    nodes=requirement.nodes,
                    taken=taken,
                    cache=summaries,
                )
            if isinstance(found, PreemptionPlan):
                plans.append(found)
                taken |= found.victim_ids
                self._adopt(found)
            elif isinstance(found, Wait):
                waited_on.update(found.runner_ids)
                continue  # it waits: the rest of the lane too
            elif found != "planned":
                continue  # nobody to preempt: the rest of the lane neither
            if index + 1 < len(lane):
                heapq.heappush(cursors, (lane[index + 1], lane_key, index + 1))
        for runner_id in summaries:
            self._summary_stamps[runner_id] = occupancy.layout_stamp(runner_id)
        return tuple(plans)

    def _valid_summaries(self) -> SummaryCache:
        """The cached host summaries, less those whose host changed since."""
        summaries, stamps, occupancy = self._summaries, self._summary_stamps, self._occupancy
        for runner_id in list(summaries):
            if stamps.get(runner_id) != occupancy.layout_stamp(runner_id):
                del summaries[runner_id]
        return summaries

    def _adopt(self, plan: PreemptionPlan) -> None:
        """Keep a new plan, and hold its GPUs that are free already."""
        self._plans[plan.job_id] = plan
        self._hold_free(plan)
        for runner_id, _ in plan.hosts:
            self._summaries.pop(runner_id, None)

    def _fits_now(self, count: int, requirement: Requirement) -> bool:
        occupancy = self._occupancy
        if requirement.nodes > 1:
            return occupancy.fit_gang(count, requirement) is not None
        return occupancy.fit_host(count, requirement) is not None

    def _host_view(self, runner_id: str, requirement: object) -> HostGpus:
        occupancy = self._occupancy
        stamp = occupancy.layout_stamp(runner_id)
        cached = self._views.get(runner_id)
        if cached is not None and cached[0] == stamp:
            view = cached[1]
        else:
            view = HostGpus(
                runner_id=runner_id,
                usable=occupancy.usable_gpus(runner_id, ANY_GPU),
                free=occupancy.free_gpus(runner_id),
                holders=occupancy.holders_on(runner_id),
            )
            self._views[runner_id] = (stamp, view)
        if requirement == ANY_GPU:
            return view
        usable = occupancy.usable_gpus(runner_id, requirement)  # type: ignore[arg-type]
        return msgspec.structs.replace(view, usable=usable)

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
    scheduler = PlacementCore(policy)
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
    return msgspec.structs.replace(
        placement,
        unplaceable=tuple(
            Unplaceable(job_id=entry.job_id, reason=entry.unplaceable)
            for entry in entries
            if entry.unplaceable is not None
        ),
        queue=entries,
    )


def _verdict(facts: VictimFacts) -> tuple[bool, bool, int]:
    """What of a job's facts a host summary depends on."""
    return (facts.eligible, facts.soon, facts.priority)


def _ends_at(remaining_s: float | None) -> float:
    return INFINITY if remaining_s is None else max(0.0, float(remaining_s))
