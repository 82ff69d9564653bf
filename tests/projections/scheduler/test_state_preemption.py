"""The scheduler's projection for preemption and time limits: facts, plans and limits come
from the recorded events, so a restart or a takeover sees the same."""

from __future__ import annotations

from datetime import timedelta

from tests.projections.conftest import heartbeat, spec
from tests.projections.scheduler.test_state import T0, Log

from swift_trainer.core import events as e
from swift_trainer.projections.scheduler.placement import PlacementPolicy
from swift_trainer.projections.scheduler.preemption import PreemptionPolicy
from swift_trainer.projections.scheduler.state import SchedulerState

POLICY = PlacementPolicy(
    preemption=PreemptionPolicy(enabled=True, min_runtime_s=60, max_per_hour=2, grace_s=30)
)


def running_job(job_id: str, gpu: int, *, priority: int = 2, **more: object) -> list[e.Event]:
    return [
        e.JobSubmitted(at=T0, job_id=job_id, spec=spec(job_id, priority=priority, **more)),
        e.JobQueued(at=T0, job_id=job_id, priority=priority),
        e.JobScheduled(at=T0, job_id=job_id, attempt=1, runner_id="r1", gpu_ids=(gpu,)),
        e.JobStarted(at=T0, job_id=job_id, attempt=1, runner_id="r1", pid=1, command=("x",)),
    ]


def cluster(log: Log, state: SchedulerState) -> None:
    state.update_runner(heartbeat("r1", gpus=2, at=T0, lease_s=3600))
    state.apply(log.add(*running_job("low_a", 0), *running_job("low_b", 1)), T0)


def test_a_job_past_its_minimum_runtime_is_preempted_for_an_urgent_one() -> None:
    log, state = Log(), SchedulerState(POLICY)
    cluster(log, state)
    state.apply(log.add(*urgent()), T0)
    state.refresh(T0 + timedelta(seconds=59))
    assert state.placement.place().preemptions == (), "not before the minimum runtime"
    state.refresh(T0 + timedelta(seconds=61))
    (plan,) = state.placement.place().preemptions
    assert plan.victim_ids == {"low_a", "low_b"}
    assert plan.reason(plan.victims[0]) == "preempted by urgent (priority 9 > 2) on host r1"


def urgent() -> list[e.Event]:
    return [
        e.JobSubmitted(at=T0, job_id="urgent", spec=spec("urgent", priority=9, gpu_count=2)),
        e.JobQueued(at=T0, job_id="urgent", priority=9),
    ]


def test_a_preemption_under_way_is_rebuilt_from_the_log_by_a_new_scheduler() -> None:
    log = Log()
    first = SchedulerState(POLICY)
    cluster(log, first)
    later = T0 + timedelta(seconds=120)
    stops = [
        e.StopRequested(
            at=later,
            job_id=victim,
            reason="preempted by urgent (priority 9 > 2) on host r1",
            runner_id="r1",
            attempt=1,
            intent="preempt",
            grace_s=30,
            preempted_by="urgent",
            reserved_gpu_ids=(0, 1),
        )
        for victim in ("low_a", "low_b")
    ]
    log.add(*urgent(), *stops)
    fresh = SchedulerState(POLICY)
    fresh.update_runner(heartbeat("r1", gpus=2, at=T0, lease_s=3600))
    fresh.apply(log.events, later)
    fresh.refresh(later)
    assert fresh.placement.plans["urgent"].victim_ids == {"low_a", "low_b"}
    assert fresh.placement.place().preemptions == (), "nothing is preempted twice"
    done = [
        x
        for victim in ("low_a", "low_b")
        for x in (
            e.JobPreempted(at=later, job_id=victim, attempt=1, reason="p", preempted_by="urgent"),
            e.JobRequeued(at=later, job_id=victim, priority=2, retries=0, reason="p"),
        )
    ]
    fresh.apply(log.add(*done), later)
    fresh.refresh(later)
    (decision,) = fresh.placement.place().decisions
    assert (decision.job_id, decision.gpu_ids) == ("urgent", (0, 1))


def test_the_hourly_cap_counts_preemptions_recorded_in_the_log() -> None:
    log, state = Log(), SchedulerState(POLICY)
    state.update_runner(heartbeat("r1", gpus=1, at=T0, lease_s=36_000))
    history = running_job("low", 0)
    for n in range(2):
        at = T0 + timedelta(minutes=10 * n)
        history += [
            e.JobPreempted(at=at, job_id="low", attempt=n + 1, reason="p"),
            e.JobRequeued(at=at, job_id="low", priority=2, retries=0, reason="p"),
            e.JobScheduled(at=at, job_id="low", attempt=n + 2, runner_id="r1", gpu_ids=(0,)),
            e.JobStarted(at=at, job_id="low", attempt=n + 2, runner_id="r1", pid=1, command=()),
        ]
    one_gpu = [
        e.JobSubmitted(at=T0, job_id="urgent", spec=spec("urgent", priority=9)),
        e.JobQueued(at=T0, job_id="urgent", priority=9),
    ]
    state.apply(log.add(*history, *one_gpu), T0)
    state.refresh(T0 + timedelta(minutes=30))
    assert state.placement.place().preemptions == (), "two in the last hour: capped"
    state.refresh(T0 + timedelta(minutes=61))
    assert state.placement.place().preemptions, "an hour after the first, one more is allowed"


def test_a_time_limit_is_found_from_the_runtime_of_every_attempt() -> None:
    log, state = Log(), SchedulerState(POLICY)
    state.update_runner(heartbeat("r1", gpus=1, at=T0, lease_s=36_000))
    history = running_job("limited", 0, max_runtime="2m")
    ended = T0 + timedelta(seconds=90)
    history += [
        e.JobLost(at=ended, job_id="limited", attempt=1, runner_id="r1", reason="lost"),
        e.JobRequeued(at=ended, job_id="limited", priority=2, retries=1, reason="lost"),
        e.JobScheduled(at=ended, job_id="limited", attempt=2, runner_id="r1", gpu_ids=(0,)),
        e.JobStarted(at=ended, job_id="limited", attempt=2, runner_id="r1", pid=2, command=()),
    ]
    state.apply(log.add(*history), ended)
    assert state.time_limits(ended + timedelta(seconds=29)) == []
    (limit,) = state.time_limits(ended + timedelta(seconds=30))
    assert (limit.job_id, limit.attempt) == ("limited", 2)
    assert "max_runtime of 2m (120s)" in limit.reason
