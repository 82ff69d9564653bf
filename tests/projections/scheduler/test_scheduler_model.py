"""The scheduler against a simple model, driven by hypothesis.

The model keeps plain dicts of hosts, queued and running jobs and owners' ``max_gpus``, and
``reference_pass`` applies the documented policy by brute force (every job against every
host, no indexes, no pruning, and the next job picked afresh each time by priority, then its
owner's GPUs in use at that moment, then submission: fair share and quotas by definition).
A stateful test drives the incremental scheduler through random histories (owners, quotas
set and lifted, GPUs freed); after every step it must agree with the reference, agree with
a rebuild from snapshots (``place_jobs``), and satisfy the invariants the design promises,
checked on their own terms so that a bug shared by the scheduler and the reference still
shows. A second test checks single passes over random moments, where contention is the
rule.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from swift_trainer.projections.scheduler import (
    Decision,
    GpuSnapshot,
    HostSnapshot,
    JobQueue,
    Occupancy,
    OwnerUsage,
    Placement,
    PlacementPolicy,
    QueuedJob,
    Reservation,
    RunningJob,
    Scheduler,
    place_jobs,
    place_pass,
    select_gpus,
)
from swift_trainer.projections.scheduler.gpu_choice import (
    gpu_matches,
    gpu_preference,
    requirement_of,
)
from swift_trainer.projections.scheduler.preemption import PreemptionPolicy, VictimFacts

from .builders import A100_40, A100_40_MIB, H100, H100_MIB

NOW = datetime(2026, 1, 1, tzinfo=UTC)
THRESHOLD = 1024
RUNNERS = ("r1", "r2", "r3", "r4")
#: ``None`` is the owner of jobs submitted without an API key: it has no quota.
OWNERS = (None, "ann", "bob")
QUOTA_OWNERS = ("ann", "bob")

Gpu = tuple[str, int]
GpuKey = tuple[int, float, int]


# --- the reference: the documented policy, by brute force -----------------------------------


def order(job: QueuedJob) -> tuple[int, int, str]:
    return (-job.priority, job.seq, job.job_id)


def eligible_for(gpu: GpuSnapshot, job: QueuedJob) -> bool:
    return gpu.healthy and gpu_matches(gpu, requirement_of(job.min_gpu_memory_gb, job.gpu_name))


def usable(gpu: GpuSnapshot) -> bool:
    return gpu.healthy and gpu.foreign_memory_mib < THRESHOLD


def capacity(job: QueuedJob, hosts: dict[str, HostSnapshot]) -> int:
    live = [h for h in hosts.values() if h.alive]
    return max((sum(eligible_for(g, job) for g in h.gpus) for h in live), default=0)


def gpus_in_use(running: dict[str, RunningJob]) -> dict[str | None, int]:
    in_use: dict[str | None, int] = {}
    for held in running.values():
        in_use[held.owner] = in_use.get(held.owner, 0) + len(held.gpu_ids)
    return in_use


def reference_pass(
    queued: dict[str, QueuedJob],
    hosts: dict[str, HostSnapshot],
    running: dict[str, RunningJob],
    backfill: bool,
    max_gpus: dict[str, int] | None = None,
) -> tuple[list[Decision], Reservation | None]:
    limits = max_gpus or {}
    in_use = gpus_in_use(running)
    ends: dict[Gpu, list[float]] = {}
    for held in running.values():
        for index in held.gpu_ids:
            end = math.inf if held.remaining_s is None else max(0.0, held.remaining_s)
            ends.setdefault((held.runner_id, index), []).append(end)
    reserved: set[Gpu] = set()
    decisions: list[Decision] = []
    reservation: Reservation | None = None
    live = {runner_id: h for runner_id, h in sorted(hosts.items()) if h.alive}

    def free(runner_id: str, job: QueuedJob) -> list[GpuSnapshot]:
        return [
            g
            for g in live[runner_id].gpus
            if usable(g)
            and eligible_for(g, job)
            and (runner_id, g.index) not in ends
            and (runner_id, g.index) not in reserved
        ]

    left = list(queued.values())
    while left:
        job = min(left, key=lambda j: (-j.priority, in_use.get(j.owner, 0), j.seq, j.job_id))
        left.remove(job)
        limit = limits.get(job.owner) if job.owner is not None else None
        if limit is not None and in_use.get(job.owner, 0) + job.gpu_count > limit:
            continue
        if job.gpu_count > capacity(job, hosts):
            continue
        fits = [(len(free(r, job)), r) for r in live if len(free(r, job)) >= job.gpu_count]
        if fits:
            runner_id = min(fits)[1]
            gpu_ids = select_gpus(free(runner_id, job), job.gpu_count)
            gpus = {g.index: g for g in live[runner_id].gpus}
            decisions.append(
                Decision(
                    job_id=job.job_id,
                    attempt=job.attempt + 1,
                    runner_id=runner_id,
                    gpu_ids=gpu_ids,
                    gpu_uuids=tuple(gpus[i].uuid for i in gpu_ids),
                ),
            )
            duration = job.expected_duration_s
            for index in gpu_ids:
                ends[(runner_id, index)] = [math.inf if duration is None else duration]
            in_use[job.owner] = in_use.get(job.owner, 0) + job.gpu_count
            continue
        if reservation is None:
            reservation = reference_reservation(job, live, ends)
            reserved = {(reservation.runner_id, i) for i in reservation.gpu_ids}
            if not backfill:
                break
    return decisions, reservation


def reference_reservation(
    job: QueuedJob,
    live: dict[str, HostSnapshot],
    ends: dict[Gpu, list[float]],
) -> Reservation:
    best: tuple[tuple[tuple[float, ...], str], list[tuple[float, GpuKey, int]]] | None = None
    for runner_id, h in live.items():
        times: list[tuple[float, GpuKey, int]] = []
        for g in h.gpus:
            if not eligible_for(g, job):
                continue
            if usable(g) and (runner_id, g.index) not in ends:
                time = -math.inf
            elif usable(g):
                time = max(ends[(runner_id, g.index)])
            else:
                time = math.inf
            times.append((time, gpu_preference(g), g.index))
        if len(times) < job.gpu_count:
            continue
        first = sorted(times)[: job.gpu_count]
        key = (tuple(sorted((t for t, _, _ in first), reverse=True)), runner_id)
        if best is None or key < best[0]:
            best = (key, first)
    assert best is not None
    (_, runner_id), first = best
    start = max(first[-1][0], 0.0)
    return Reservation(
        job_id=job.job_id,
        runner_id=runner_id,
        gpu_ids=tuple(sorted(i for _, _, i in first)),
        expected_start_s=None if math.isinf(start) else start,
    )


# --- the machine ----------------------------------------------------------------------------


def make_host(runner_id: str, kinds: list[tuple[bool, int | None]]) -> HostSnapshot:
    """One GPU per ``(is_h100, nvlink group)``; small hosts make contention likely."""
    return HostSnapshot(
        runner_id=runner_id,
        gpus=tuple(
            GpuSnapshot(
                index=index,
                uuid=f"GPU-{runner_id}-{index}",
                name=H100 if is_h100 else A100_40,
                memory_total_mib=H100_MIB if is_h100 else A100_40_MIB,
                memory_used_mib=(index * 37) % 5,
                utilization_pct=float(index % 2),
                nvlink_group=None if group is None else f"{runner_id}-{group}",
            )
            for index, (is_h100, group) in enumerate(kinds)
        ),
    )


gpu_kinds = st.tuples(st.booleans(), st.sampled_from([None, 0, 1]))
host_kinds = st.lists(gpu_kinds, min_size=1, max_size=4)
remaining = st.sampled_from([None, 0.0, 5.0, 10.0, 30.0])
#: Mostly small unconstrained jobs, so that passes contend; sometimes ones that never fit.
new_jobs = st.builds(
    QueuedJob,
    job_id=st.just(""),
    seq=st.just(0),
    priority=st.integers(0, 10),
    gpu_count=st.sampled_from([1, 1, 1, 2, 2, 3, 4, 5]),
    min_gpu_memory_gb=st.sampled_from([None, None, None, None, 40.0, 80.0, 100.0]),
    gpu_name=st.sampled_from([None, None, None, None, "h100", "A100", "v100"]),
    expected_duration_s=st.sampled_from([None, 10.0, 40.0]),
    owner=st.sampled_from(OWNERS),
)
quota_limits = st.sampled_from([None, 0, 1, 2, 3])


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.hosts: dict[str, HostSnapshot] = {}
        self.queued: dict[str, QueuedJob] = {}
        self.running: dict[str, RunningJob] = {}
        #: The job as last queued, to queue it again when its runner is lost.
        self.specs: dict[str, QueuedJob] = {}
        self.seq = 0
        self.next_id = 0
        self.policy = PlacementPolicy()
        self.scheduler = Scheduler(self.policy)
        self.max_gpus: dict[str, int] = {}

    @initialize(
        backfill=st.booleans(),
        layout=st.lists(host_kinds, min_size=1, max_size=len(RUNNERS)),
    )
    def setup(self, backfill: bool, layout: list[list[tuple[bool, int | None]]]) -> None:
        self.policy = PlacementPolicy(backfill=backfill, foreign_memory_threshold_mib=THRESHOLD)
        self.scheduler = Scheduler(self.policy)
        for runner_id, kinds in zip(RUNNERS, layout, strict=False):
            self.set_host(make_host(runner_id, kinds))

    def set_host(self, host: HostSnapshot) -> None:
        self.hosts[host.runner_id] = host
        self.scheduler.update_host(host)

    def enqueue(self, job: QueuedJob) -> None:
        self.seq += 1
        job = msgspec.structs.replace(job, seq=self.seq)
        self.queued[job.job_id] = job
        self.specs[job.job_id] = job
        self.scheduler.submit(job)

    # --- the queue ------------------------------------------------------------------------

    @rule(jobs=st.lists(new_jobs, min_size=1, max_size=3))
    def submit(self, jobs: list[QueuedJob]) -> None:
        for job in jobs:
            self.next_id += 1
            self.enqueue(msgspec.structs.replace(job, job_id=f"j{self.next_id}"))

    @rule(data=st.data(), priority=st.integers(0, 10))
    def change_priority(self, data: st.DataObject, priority: int) -> None:
        job_id = data.draw(st.sampled_from([*sorted(self.queued), "unknown"]))
        changed = self.scheduler.change_priority(job_id, priority)
        assert changed == (job_id in self.queued)
        if changed:
            self.queued[job_id] = msgspec.structs.replace(self.queued[job_id], priority=priority)

    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from([*sorted(self.queued), "unknown"]))
        removed = self.scheduler.remove(job_id)
        assert removed == self.queued.pop(job_id, None)

    @rule(owner=st.sampled_from(QUOTA_OWNERS), limit=quota_limits)
    def set_quota(self, owner: str, limit: int | None) -> None:
        """An admin sets (or lifts) an owner's ``max_gpus``; the next pass obeys it."""
        self.scheduler.set_quota(owner, limit)
        if limit is None:
            self.max_gpus.pop(owner, None)
        else:
            self.max_gpus[owner] = limit

    # --- running jobs ---------------------------------------------------------------------

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.running)))
        assert self.scheduler.release(job_id) == self.running.pop(job_id)

    @precondition(lambda self: self.running)
    @rule(data=st.data(), value=remaining)
    def report_progress(self, data: st.DataObject, value: float | None) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.running)))
        self.running[job_id] = msgspec.structs.replace(self.running[job_id], remaining_s=value)
        self.scheduler.set_remaining(job_id, value)

    # --- runners --------------------------------------------------------------------------

    @rule(runner_id=st.sampled_from(RUNNERS), lost=st.booleans())
    def runner_dies(self, runner_id: str, lost: bool) -> None:
        """The runner stops; with ``lost`` its jobs are marked lost and requeued at once."""
        if runner_id not in self.hosts:
            return
        self.set_host(msgspec.structs.replace(self.hosts[runner_id], alive=False))
        if lost:
            self.lose_jobs(runner_id)

    @rule(runner_id=st.sampled_from(RUNNERS))
    def lease_expires(self, runner_id: str) -> None:
        if runner_id not in self.hosts:
            return
        host = self.hosts[runner_id]
        self.scheduler.update_host(msgspec.structs.replace(host, lease_expires_at=NOW))
        expired = self.scheduler.expire_leases(NOW + timedelta(seconds=1))
        assert expired == ((runner_id,) if host.alive else ())
        self.hosts[runner_id] = msgspec.structs.replace(host, alive=False, lease_expires_at=NOW)
        assert self.scheduler.host(runner_id) == self.hosts[runner_id]
        self.lose_jobs(runner_id)

    def lose_jobs(self, runner_id: str) -> None:
        lost = self.scheduler.jobs_on(runner_id)
        assert lost == tuple(sorted(j for j, r in self.running.items() if r.runner_id == runner_id))
        for job_id in lost:
            self.scheduler.release(job_id)
            self.running.pop(job_id)
            self.enqueue(self.specs[job_id])

    @rule(runner_id=st.sampled_from(RUNNERS), kinds=host_kinds)
    def runner_returns(self, runner_id: str, kinds: list[tuple[bool, int | None]]) -> None:
        """A runner reports (again); a returning one may come back with other GPUs only if
        none of its jobs still holds GPUs there."""
        old = self.hosts.get(runner_id)
        if old is not None and any(r.runner_id == runner_id for r in self.running.values()):
            self.set_host(msgspec.structs.replace(old, alive=True, lease_expires_at=None))
        else:
            self.set_host(make_host(runner_id, kinds))

    @precondition(lambda self: self.hosts)
    @rule(
        data=st.data(),
        healthy=st.booleans(),
        foreign=st.sampled_from([0, THRESHOLD - 1, THRESHOLD, 30_000]),
    )
    def gpu_changes(self, data: st.DataObject, healthy: bool, foreign: int) -> None:
        runner_id = data.draw(st.sampled_from(sorted(self.hosts)))
        host = self.hosts[runner_id]
        index = data.draw(st.integers(0, len(host.gpus) - 1))
        gpus = list(host.gpus)
        gpus[index] = msgspec.structs.replace(
            gpus[index], healthy=healthy, foreign_memory_mib=foreign
        )
        self.set_host(msgspec.structs.replace(host, gpus=tuple(gpus)))

    # --- placement ------------------------------------------------------------------------

    @rule(arrivals=st.lists(new_jobs, max_size=3))
    def place(self, arrivals: list[QueuedJob]) -> None:
        """Jobs may arrive between two passes, as they do in the live system."""
        self.submit(arrivals)
        self.place_and_check()

    @precondition(lambda self: self.running)
    @rule(data=st.data(), arrivals=st.lists(new_jobs, max_size=2))
    def complete_then_place(self, data: st.DataObject, arrivals: list[QueuedJob]) -> None:
        """A job ends and the queue moves on: the scheduler's most common step."""
        self.complete(data)
        self.submit(arrivals)
        self.place_and_check()

    def place_and_check(self) -> None:
        expected_decisions, expected_reservation = reference_pass(
            self.queued, self.hosts, self.running, self.policy.backfill, self.max_gpus
        )
        rebuilt = place_jobs(
            self.queued.values(),
            self.hosts.values(),
            self.running.values(),
            self.policy,
            max_gpus=self.max_gpus,
        )
        queue_before = dict(self.queued)
        running_before = dict(self.running)
        result = self.scheduler.place()
        event(f"pass placed {min(len(result.decisions), 3)}+ jobs")
        event(f"pass reserved: {result.reservation is not None}")
        if any(q.gpu_count > capacity(q, self.hosts) for q in self.queued.values()):
            event("queue held an unplaceable job")
        placed = [self.queued[d.job_id] for d in result.decisions]
        if any(
            w.priority == p.priority and w.seq < p.seq and w.owner != p.owner
            for w in self.queued.values()
            for p in placed
            if w not in placed
        ):
            event("a younger job of another owner went first")
        if over_quota(self.queued, self.running, result.decisions, self.max_gpus):
            event("a quota kept a job waiting")

        assert result.decisions == tuple(expected_decisions)
        assert result.reservation == expected_reservation
        assert rebuilt.decisions == result.decisions
        assert rebuilt.reservations == (() if result.reservation is None else (result.reservation,))

        check_pass(
            queue_before,
            running_before,
            self.hosts,
            result.decisions,
            result.reservation,
            backfill=self.policy.backfill,
            max_gpus=self.max_gpus,
        )

        for decision in result.decisions:
            job = self.queued.pop(decision.job_id)
            self.specs[job.job_id] = msgspec.structs.replace(job, attempt=decision.attempt)
            self.running[job.job_id] = RunningJob(
                job_id=job.job_id,
                runner_id=decision.runner_id,
                gpu_ids=decision.gpu_ids,
                remaining_s=job.expected_duration_s,
                priority=job.priority,
                owner=job.owner,
            )
        assert [q.job_id for q in rebuilt.queue] == [
            q.job_id for q in sorted(self.queued.values(), key=order)
        ]
        assert self.scheduler.report() == rebuilt.queue
        assert {u.job_id for u in rebuilt.unplaceable} == {
            q.job_id for q in self.queued.values() if q.gpu_count > capacity(q, self.hosts)
        }

    # --- invariants after every step ------------------------------------------------------

    @invariant()
    def queue_matches_the_model(self) -> None:
        expected = sorted(self.queued.values(), key=order)
        assert self.scheduler.queued_jobs() == expected
        for position, job in enumerate(expected, start=1):
            assert self.scheduler.position(job.job_id) == position

    @invariant()
    def assignments_match_the_model(self) -> None:
        assert self.scheduler.running_jobs() == [self.running[j] for j in sorted(self.running)]

    @invariant()
    def no_gpu_is_held_twice(self) -> None:
        seen: set[Gpu] = set()
        for held in self.running.values():
            for index in held.gpu_ids:
                assert (held.runner_id, index) not in seen
                seen.add((held.runner_id, index))


def over_quota(
    queued: dict[str, QueuedJob],
    running: dict[str, RunningJob],
    decisions: tuple[Decision, ...],
    max_gpus: dict[str, int],
) -> list[QueuedJob]:
    """Jobs left waiting that their owner's quota would refuse after the pass."""
    in_use = gpus_in_use(running)
    placed = {d.job_id for d in decisions}
    for decision in decisions:
        owner = queued[decision.job_id].owner
        in_use[owner] = in_use.get(owner, 0) + len(decision.gpu_ids)
    return [
        job
        for job in queued.values()
        if job.job_id not in placed
        and job.owner in max_gpus
        and in_use.get(job.owner, 0) + job.gpu_count > max_gpus[job.owner]
    ]


def check_pass(
    queued: dict[str, QueuedJob],
    running: dict[str, RunningJob],
    hosts: dict[str, HostSnapshot],
    decisions: tuple[Decision, ...],
    reservation: Reservation | None,
    *,
    backfill: bool,
    max_gpus: dict[str, int] | None = None,
) -> None:
    """The promises of one pass, stated directly rather than by re-running the policy.

    With one owner and no quota the pass follows the queue order, and every promise about
    it is checked; with several owners fair share reorders jobs of equal priority, and the
    promises that need no order are checked (the reference checks the order itself).
    """
    limits = max_gpus or {}
    queue = sorted(queued.values(), key=order)
    rank = {job.job_id: n for n, job in enumerate(queue)}
    placed_now = {d.job_id for d in decisions}
    waiting = [job for job in queue if job.job_id not in placed_now]
    placeable = [job for job in waiting if job.gpu_count <= capacity(job, hosts)]
    before = gpus_in_use(running)
    owners = {job.owner for job in queued.values()} | set(before)
    in_queue_order = len(owners) <= 1 and not limits

    # Quotas: a pass never takes an owner past its max_gpus, and it leaves waiting (without
    # a reservation) only jobs that did not fit or that their owner's quota refused.
    after = dict(before)
    for decision in decisions:
        owner = queued[decision.job_id].owner
        after[owner] = after.get(owner, 0) + len(decision.gpu_ids)
    for owner, limit in limits.items():
        assert after.get(owner, 0) == before.get(owner, 0) or after[owner] <= limit
    refused = {job.job_id for job in over_quota(queued, running, decisions, limits)}
    if reservation is None:
        assert all(job.job_id in refused for job in placeable)
    head: QueuedJob | None
    if in_queue_order:
        head = placeable[0] if placeable else None
    else:
        head = queued[reservation.job_id] if reservation is not None else None
    reserved: set[Gpu] = set()
    if reservation is not None:
        assert head is not None
        assert reservation.job_id == head.job_id  # only the head reserves (EASY)
        assert head in placeable
        limit = limits.get(head.owner) if head.owner is not None else None
        assert limit is None or before.get(head.owner, 0) + head.gpu_count <= limit
        assert len(reservation.gpu_ids) == head.gpu_count
        assert hosts[reservation.runner_id].alive
        reserved = {(reservation.runner_id, i) for i in reservation.gpu_ids}
    else:
        assert head is None or not in_queue_order

    held: set[Gpu] = {(r.runner_id, i) for r in running.values() for i in r.gpu_ids}
    for decision in decisions:
        job = queued[decision.job_id]
        host = hosts[decision.runner_id]
        gpus = {g.index: g for g in host.gpus}
        # Gang: all of the job's GPUs, distinct, on one live host, at once.
        assert host.alive
        assert len(decision.gpu_ids) == len(set(decision.gpu_ids)) == job.gpu_count
        assert decision.attempt == job.attempt + 1
        assert decision.gpu_uuids == tuple(gpus[i].uuid for i in decision.gpu_ids)
        behind_head = in_queue_order and head is not None and rank[job.job_id] > rank[head.job_id]
        for index in decision.gpu_ids:
            assert usable(gpus[index])
            assert eligible_for(gpus[index], job)
            spot = (decision.runner_id, index)
            assert spot not in held  # never two live jobs on one GPU
            assert not (behind_head and spot in reserved)  # reserved GPUs are not backfilled
            held.add(spot)
        if head is not None and not backfill and in_queue_order:
            assert not behind_head  # strict FIFO: nothing behind the blocked head starts

    for job in waiting:
        # FIFO: no younger job of the same shape and owner went ahead of an older one.
        younger = [queued[j] for j in placed_now if rank[j] > rank[job.job_id]]
        assert all(other.lane != job.lane for other in younger) or job not in placeable
    if not in_queue_order:
        return
    for job in placeable:
        if backfill or job is head:
            assert not could_have_started(job, job is head, hosts, decisions, rank, held, reserved)


def could_have_started(
    job: QueuedJob,
    is_head: bool,
    hosts: dict[str, HostSnapshot],
    decisions: tuple[Decision, ...],
    rank: dict[str, int],
    after: set[Gpu],
    reserved: set[Gpu],
) -> bool:
    """Whether ``job`` was overtaken on GPUs it could have used.

    On some host, the GPUs still free after the pass plus those given to jobs behind it
    would have made room for it. The head may count its own reservation; jobs behind it may
    not (that is the backfill rule).
    """
    later = {
        (d.runner_id, i) for d in decisions if rank[d.job_id] > rank[job.job_id] for i in d.gpu_ids
    }
    for runner_id, host in hosts.items():
        if not host.alive:
            continue
        room = 0
        for gpu in host.gpus:
            spot = (runner_id, gpu.index)
            if usable(gpu) and eligible_for(gpu, job):
                free_after = spot not in after and (is_head or spot not in reserved)
                room += free_after or spot in later
        if room >= job.gpu_count:
            return True
    return False


@st.composite
def clusters(
    draw: st.DrawFn,
) -> tuple[dict[str, HostSnapshot], dict[str, RunningJob], dict[str, QueuedJob]]:
    """A random moment: hosts in any state, GPUs held by running jobs, a queue."""
    hosts: dict[str, HostSnapshot] = {}
    running: dict[str, RunningJob] = {}
    layout = draw(st.lists(st.lists(gpu_kinds, min_size=1, max_size=8), min_size=1, max_size=4))
    for runner_id, kinds in zip(RUNNERS, layout, strict=False):
        host = make_host(runner_id, kinds)
        gpus = tuple(
            msgspec.structs.replace(
                gpu,
                healthy=draw(st.sampled_from([True, True, True, False])),
                foreign_memory_mib=draw(st.sampled_from([0, 0, 0, THRESHOLD - 1, THRESHOLD])),
            )
            for gpu in host.gpus
        )
        alive = draw(st.sampled_from([True, True, True, False]))
        hosts[runner_id] = msgspec.structs.replace(host, gpus=gpus, alive=alive)
        owners: dict[int, list[int]] = {}
        for gpu in gpus:
            owner = draw(st.sampled_from([None, None, 0, 1, 2, 3]))
            if owner is not None:
                owners.setdefault(owner, []).append(gpu.index)
        for holder, indices in owners.items():
            job_id = f"run-{runner_id}-{holder}"
            running[job_id] = RunningJob(
                job_id=job_id,
                runner_id=runner_id,
                gpu_ids=tuple(indices),
                remaining_s=draw(remaining),
                owner=draw(st.sampled_from(OWNERS)),
            )
    queue = draw(st.lists(new_jobs, min_size=1, max_size=10))
    queued = {
        f"q{n}": msgspec.structs.replace(job, job_id=f"q{n}", seq=n) for n, job in enumerate(queue)
    }
    return hosts, running, queued


@settings(max_examples=200, deadline=None)
@given(
    cluster=clusters(),
    backfill=st.booleans(),
    quotas=st.dictionaries(st.sampled_from(QUOTA_OWNERS), st.integers(0, 4)),
)
def test_random_snapshots_follow_the_policy(
    cluster: tuple[dict[str, HostSnapshot], dict[str, RunningJob], dict[str, QueuedJob]],
    backfill: bool,
    quotas: dict[str, int],
) -> None:
    hosts, running, queued = cluster
    policy = PlacementPolicy(backfill=backfill, foreign_memory_threshold_mib=THRESHOLD)
    result = place_jobs(queued.values(), hosts.values(), running.values(), policy, max_gpus=quotas)
    decisions, reservation = reference_pass(queued, hosts, running, backfill, quotas)
    event(f"placed {min(len(decisions), 3)}+ jobs; reserved: {reservation is not None}")
    if over_quota(queued, running, result.decisions, quotas):
        event("a quota kept a job waiting")
    assert result.decisions == tuple(decisions)
    assert result.reservations == (() if reservation is None else (reservation,))
    check_pass(
        queued, running, hosts, result.decisions, reservation, backfill=backfill, max_gpus=quotas
    )


SchedulerMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
)
TestScheduler = SchedulerMachine.TestCase


@settings(max_examples=200, deadline=None)
@given(
    cluster=clusters(),
    backfill=st.booleans(),
    quotas=st.dictionaries(st.sampled_from(QUOTA_OWNERS), st.integers(0, 4)),
)
def test_a_pass_that_does_not_report_its_reservation_decides_the_same(
    cluster: tuple[dict[str, HostSnapshot], dict[str, RunningJob], dict[str, QueuedJob]],
    backfill: bool,
    quotas: dict[str, int],
) -> None:
    """The wait estimate's passes skip a reservation that cannot change a decision."""
    hosts, running, queued = cluster
    occupancy = Occupancy(THRESHOLD)
    usage = OwnerUsage()
    for host in hosts.values():
        occupancy.set_host(host)
    for held in running.values():
        end = math.inf if held.remaining_s is None else held.remaining_s
        occupancy.hold(held.job_id, held.runner_id, held.gpu_ids, end)
        usage.hold(held.job_id, held.owner, len(held.gpu_ids))
    for owner, limit in quotas.items():
        usage.set_quota(owner, limit)
    queue = JobQueue()
    queue.extend(queued.values())
    outcomes = []
    for report in (True, False):
        simulated, owners = occupancy.clone(), usage.clone()
        outcome = place_pass(
            simulated,
            queue.lanes,
            queue.job,
            usage=owners,
            backfill=backfill,
            report_reservation=report,
        )
        free = {runner_id: simulated.free_gpus(runner_id) for runner_id in hosts}
        outcomes.append((outcome.decisions, outcome.placed_per_lane, free))
    assert outcomes[0] == outcomes[1]


def reference_waits(
    queued: dict[str, QueuedJob],
    hosts: dict[str, HostSnapshot],
    running: dict[str, RunningJob],
    backfill: bool,
    max_gpus: dict[str, int],
) -> dict[str, float]:
    """The wait estimate by definition: brute-force passes at every moment a job ends."""
    waiting = dict(queued)
    ends = {
        job_id: math.inf if held.remaining_s is None else max(0.0, held.remaining_s)
        for job_id, held in running.items()
    }
    held_now = dict(running)
    now = 0.0
    waits: dict[str, float] = {}
    while waiting:
        snapshot = {
            job_id: msgspec.structs.replace(
                held, remaining_s=None if math.isinf(ends[job_id]) else ends[job_id] - now
            )
            for job_id, held in held_now.items()
        }
        decisions, _ = reference_pass(waiting, hosts, snapshot, backfill, max_gpus)
        for decision in decisions:
            job = waiting.pop(decision.job_id)
            waits[job.job_id] = now
            duration = job.expected_duration_s
            ends[job.job_id] = math.inf if duration is None else now + duration
            held_now[job.job_id] = RunningJob(
                job_id=job.job_id,
                runner_id=decision.runner_id,
                gpu_ids=decision.gpu_ids,
                owner=job.owner,
            )
        finite = [end for end in ends.values() if not math.isinf(end)]
        if not finite:
            break
        now = min(finite)
        for job_id in [j for j, end in ends.items() if end == now]:
            del ends[job_id], held_now[job_id]
    return waits


@settings(max_examples=200, deadline=None)
@given(
    cluster=clusters(),
    backfill=st.booleans(),
    quotas=st.dictionaries(st.sampled_from(QUOTA_OWNERS), st.integers(0, 4)),
)
def test_wait_estimates_follow_the_reference_simulation(
    cluster: tuple[dict[str, HostSnapshot], dict[str, RunningJob], dict[str, QueuedJob]],
    backfill: bool,
    quotas: dict[str, int],
) -> None:
    """The queue report's estimates, with its shortcuts, against passes by definition."""
    hosts, running, queued = cluster
    scheduler = Scheduler(
        PlacementPolicy(backfill=backfill, foreign_memory_threshold_mib=THRESHOLD)
    )
    for host in hosts.values():
        scheduler.update_host(host)
    for held in running.values():
        scheduler.assign(held)
    for owner, limit in quotas.items():
        scheduler.set_quota(owner, limit)
    scheduler.submit_many(queued.values())
    expected = reference_waits(queued, hosts, running, backfill, quotas)
    event(f"estimated {min(len(expected), 4)}+ of {min(len(queued), 4)}+")
    got = {slot.job_id: slot.estimated_wait_s for slot in scheduler.report()}
    assert {j: w for j, w in got.items() if w is not None} == expected


# --- preemption -----------------------------------------------------------------------------


def victim_gpus(
    host: HostSnapshot,
    job: QueuedJob,
    holders: dict[int, set[str]],
    facts: dict[str, VictimFacts],
    taken: set[str],
) -> tuple[int, int, list[str]] | None:
    """For one live host: ``(free, free soon, victims allowed)`` for ``job``, by definition."""
    mine = [g for g in host.gpus if usable(g) and eligible_for(g, job)]
    if len(mine) < job.gpu_count:
        return None
    free = sum(1 for g in mine if not holders.get(g.index))
    soon = sum(
        1
        for g in mine
        if holders.get(g.index)
        and all(h in facts and facts[h].soon and h not in taken for h in holders[g.index])
    )
    allowed = sorted(
        {
            h
            for g in mine
            for h in holders.get(g.index, ())
            if h in facts
            and h not in taken
            and facts[h].eligible
            and facts[h].priority < job.priority
        }
    )
    return free, soon, allowed


def could_preempt(
    host: HostSnapshot,
    job: QueuedJob,
    holders: dict[int, set[str]],
    facts: dict[str, VictimFacts],
    taken: set[str],
) -> bool | None:
    """Whether some set of allowed victims frees enough GPUs (None: the job must wait)."""
    found = victim_gpus(host, job, holders, facts, taken)
    if found is None:
        return False
    free, soon, allowed = found
    if free + soon >= job.gpu_count:
        return None
    mine = [g.index for g in host.gpus if usable(g) and eligible_for(g, job)]
    everyone = set(allowed)
    freed = sum(1 for i in mine if holders.get(i) and holders[i] <= everyone)
    return free + freed >= job.gpu_count


def draw_victim_facts(
    data: st.DataObject, running: dict[str, RunningJob]
) -> dict[str, VictimFacts]:
    """Random rule outcomes for every running job; its priority is written back."""
    facts: dict[str, VictimFacts] = {}
    for job_id, held in list(running.items()):
        priority = data.draw(st.integers(0, 10))
        running[job_id] = msgspec.structs.replace(held, priority=priority)
        soon = data.draw(st.integers(0, 4)) == 0
        facts[job_id] = VictimFacts(
            job_id=job_id,
            attempt=1,
            priority=priority,
            eligible=data.draw(st.booleans()) and not soon,
            soon=soon,
            lost_work_s=data.draw(st.integers(0, 100)),
        )
    return facts


def holders_after(
    hosts: dict[str, HostSnapshot],
    running: dict[str, RunningJob],
    decisions: tuple[Decision, ...],
    promised: set[tuple[str, int]],
) -> dict[str, dict[int, set[str]]]:
    """Who holds each GPU after a pass: running jobs, decisions, GPUs promised to plans."""
    holders: dict[str, dict[int, set[str]]] = {r: {} for r in hosts}
    for held in [*running.values(), *decisions]:
        for index in held.gpu_ids:
            holders[held.runner_id].setdefault(index, set()).add(held.job_id)
    for runner_id, index in promised:
        holders[runner_id].setdefault(index, set()).add("promised")
    return holders


def check_plans(
    placement: Placement,
    hosts: dict[str, HostSnapshot],
    running: dict[str, RunningJob],
    queued: dict[str, QueuedJob],
    facts: dict[str, VictimFacts],
    scheduler: Scheduler,
) -> tuple[set[str], set[tuple[str, int]]]:
    """Every plan follows the rules; returns the victims taken and the GPUs promised."""
    placed = {d.job_id for d in placement.decisions}
    before = holders_after(hosts, running, placement.decisions, set())
    taken: set[str] = set()
    promised: set[tuple[str, int]] = set()
    for plan in placement.preemptions:
        job = queued[plan.job_id]
        assert plan.job_id not in placed
        assert plan.priority == job.priority
        assert len(plan.gpu_ids) == len(set(plan.gpu_ids)) == job.gpu_count
        assert hosts[plan.runner_id].alive
        gpus = {g.index: g for g in hosts[plan.runner_id].gpus}
        for victim in plan.victims:
            fact = facts[victim.job_id]
            assert fact.priority < job.priority, "a victim has strictly lower priority"
            assert fact.eligible and not fact.soon, "preemptible, past its minimum, under cap"
            assert running[victim.job_id].runner_id == plan.runner_id, "all on one host"
            assert victim.job_id not in taken, "no job is the victim of two plans"
            taken.add(victim.job_id)
        for index in plan.gpu_ids:
            assert usable(gpus[index]) and eligible_for(gpus[index], job)
            assert before[plan.runner_id].get(index, set()) <= plan.victim_ids
            assert (plan.runner_id, index) not in promised, "no GPU is promised twice"
            promised.add((plan.runner_id, index))
        assert not usage_over_quota(scheduler, job), "never past the owner's quota"
    return taken, promised


@settings(max_examples=300, deadline=None)
@given(
    cluster=clusters(),
    data=st.data(),
    quotas=st.dictionaries(st.sampled_from(QUOTA_OWNERS), st.integers(0, 4)),
)
def test_random_snapshots_preempt_by_the_rules(
    cluster: tuple[dict[str, HostSnapshot], dict[str, RunningJob], dict[str, QueuedJob]],
    data: st.DataObject,
    quotas: dict[str, int],
) -> None:
    """A pass with preemption on: every victim is allowed by the rules, the victims of a
    plan are on one host and free enough GPUs there, the preemptor is promised exactly
    GPUs that are free or its victims', and no job waits for one it could have preempted."""
    hosts, running, queued = cluster
    facts = draw_victim_facts(data, running)
    policy = PlacementPolicy(
        foreign_memory_threshold_mib=THRESHOLD, preemption=PreemptionPolicy(enabled=True)
    )
    scheduler = Scheduler(policy)
    for owner, limit in quotas.items():
        scheduler.set_quota(owner, limit)
    for snapshot in hosts.values():
        scheduler.update_host(snapshot)
    for held in running.values():
        scheduler.assign(held)
    scheduler.submit_many(queued.values())
    scheduler.set_victim_facts(facts)
    placement = scheduler.place()
    event(f"plans: {min(len(placement.preemptions), 2)}+")
    taken, promised = check_plans(placement, hosts, running, queued, facts, scheduler)
    # No job waits for a lower-priority one it could have preempted: the first job in queue
    # order that got neither GPUs nor a plan had no allowed victims (or must wait).
    planned = {plan.job_id for plan in placement.preemptions}
    placed = {d.job_id for d in placement.decisions}
    holders = holders_after(hosts, running, placement.decisions, promised)
    waiting = [
        job
        for job in sorted(queued.values(), key=order)
        if job.job_id not in placed | planned
        and not usage_over_quota(scheduler, job)
        and capacity(job, hosts) >= job.gpu_count
    ]
    if not waiting:
        return
    job = waiting[0]
    live = [h for h in hosts.values() if h.alive]
    verdicts = [could_preempt(h, job, holders[h.runner_id], facts, taken) for h in live]
    if None not in verdicts:  # no host frees within the grace: it must have had no victims
        assert not any(verdicts), f"{job.job_id} waits for a job it could preempt"


def usage_over_quota(scheduler: Scheduler, job: QueuedJob) -> bool:
    """Whether the job's owner is at its quota once this pass's decisions hold GPUs."""
    limit = None if job.owner is None else scheduler._usage.max_gpus(job.owner)
    return limit is not None and scheduler.gpus_in_use(job.owner) + job.gpu_count > limit
