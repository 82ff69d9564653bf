"""The job aggregate's side of preemption and time limits: one test per rule."""

from __future__ import annotations

from datetime import timedelta

from tests.core.test_job import CKPT_100, CKPT_200, JOB, running

from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.errors import InvalidTransition, StaleAssignment
from swift_trainer.core.job import JobStatus

REASON = "preempted by urgent (priority 9 > 2) on host gpu-host-1"


def preempt(attempt: int = 1, grace_s: float = 120.0) -> c.PreemptJob:
    return c.PreemptJob(
        job_id=JOB,
        attempt=attempt,
        preempted_by="urgent",
        reason=REASON,
        grace_s=grace_s,
        reserved_gpu_ids=(0, 1),
    )


def test_a_preemption_asks_the_runner_for_the_graceful_stop_with_its_grace() -> None:
    job = running(priority=2)
    (stop,) = job.do(preempt(grace_s=30))
    assert isinstance(stop, e.StopRequested)
    assert (stop.intent, stop.reason, stop.grace_s, stop.attempt) == ("preempt", REASON, 30, 1)
    assert (stop.preempted_by, stop.reserved_gpu_ids, stop.runner_id) == (
        "urgent",
        (0, 1),
        "gpu-host-1",
    )
    assert job.state.status is JobStatus.STOPPING
    assert job.state.preempted_by == "urgent"
    assert job.do(preempt()) == [], "a second request for the same preemption changes nothing"


def test_a_preempted_job_goes_back_to_the_queue_from_its_checkpoint_without_a_retry() -> None:
    job = running(priority=2, max_retries=0)
    job.do(job.checkpoint(CKPT_100))
    job.do(preempt())
    preempted, requeued = job.do(job.stopped(checkpoint=CKPT_200))
    assert isinstance(preempted, e.JobPreempted)
    assert (preempted.checkpoint, preempted.preempted_by) == (CKPT_200, "urgent")
    assert isinstance(requeued, e.JobRequeued)
    assert (requeued.resume_from, requeued.retries, requeued.reason) == (CKPT_200, 0, REASON)
    state = job.state
    assert state.status is JobStatus.QUEUED
    assert (state.preemptions, state.retries, state.preempted_by) == (1, 0, None)
    assert state.preempted_at == (job.now,)
    (scheduled,) = job.schedule()
    assert isinstance(scheduled, e.JobScheduled)
    assert scheduled.resume_from == CKPT_200, "the next attempt resumes from the checkpoint"


def test_a_job_killed_at_the_end_of_its_grace_is_still_requeued() -> None:
    job = running(priority=2)
    job.do(job.checkpoint(CKPT_100))
    job.do(preempt())
    events = job.do(job.failed())
    assert [type(x) for x in events] == [e.JobPreempted, e.JobRequeued]
    assert job.state.status is JobStatus.QUEUED
    assert job.state.resume_from == CKPT_100


def test_a_runner_lost_during_a_preemption_still_requeues_the_job() -> None:
    job = running(priority=2)
    job.do(preempt())
    events = job.do(job.lost())
    assert [type(x) for x in events] == [e.JobLost, e.JobPreempted, e.JobRequeued]
    assert job.state.retries == 0


def test_a_job_that_is_not_preemptible_is_refused_as_a_victim() -> None:
    job = running(priority=2, preemptible=False)
    message = job.refuse(preempt(), InvalidTransition, "invalid_transition")
    assert "preemptible: false" in message


def test_only_the_running_attempt_can_be_preempted() -> None:
    job = running(priority=2)
    job.refuse(preempt(attempt=2), InvalidTransition, "invalid_transition")


def test_a_users_stop_during_a_preemption_ends_the_job_stopped() -> None:
    job = running(priority=2)
    job.do(preempt())
    (stop,) = job.do(c.StopJob(job_id=JOB))
    assert isinstance(stop, e.StopRequested) and stop.intent == "stop"
    job.do(job.stopped())
    assert job.state.status is JobStatus.STOPPED
    assert job.state.preemptions == 0


def test_runtime_counts_over_all_attempts_from_the_events() -> None:
    job = running(max_runtime=3600)
    started = job.state.run_since
    assert started is not None
    job.do(preempt())
    job.do(job.stopped())
    ran = job.state.runtime_s
    assert ran == (job.now - started).total_seconds() > 0
    assert job.state.run_since is None
    job.schedule()
    job.do(job.started())
    later = job.now + timedelta(seconds=100)
    assert job.state.runtime_at(later) == ran + 100
    assert job.state.runtime_at(job.now) == ran, "no time yet in this attempt"
    assert job.state.runtime_at(job.now - timedelta(seconds=5)) == ran, "never less"
    job.do(preempt(attempt=2))
    job.do(job.stopped())
    assert job.state.run_since is None
    assert job.state.runtime_at(later) == job.state.runtime_s, "not running: nothing added"


def test_at_its_max_runtime_a_job_stops_with_a_checkpoint_and_ends_timed_out() -> None:
    job = running(max_runtime="1h")
    (stop,) = job.do(c.TimeOutJob(job_id=JOB, attempt=1, reason="reached its max_runtime"))
    assert isinstance(stop, e.StopRequested) and stop.intent == "timeout"
    (ended,) = job.do(job.stopped(checkpoint=CKPT_100))
    assert isinstance(ended, e.JobTimedOut)
    assert ended.checkpoint == CKPT_100
    assert job.state.status is JobStatus.TIMED_OUT
    assert job.state.stop_reason == "reached its max_runtime"


def test_a_time_limit_during_a_stop_for_a_time_limit_or_a_cancel_changes_nothing() -> None:
    limit = c.TimeOutJob(job_id=JOB, attempt=1, reason="reached its max_runtime")
    for first in (limit, c.CancelJob(job_id=JOB)):
        job = running(max_runtime=60)
        job.do(first)
        assert job.do(limit) == []


def test_a_time_limit_during_a_users_stop_ends_the_job_timed_out() -> None:
    job = running(max_runtime=60)
    job.do(c.StopJob(job_id=JOB))
    (stop,) = job.do(c.TimeOutJob(job_id=JOB, attempt=1, reason="reached its max_runtime"))
    assert stop == e.StopRequested(
        at=job.now,
        job_id=JOB,
        reason="reached its max_runtime",
        runner_id="gpu-host-1",
        attempt=1,
        intent="timeout",
    )
    job.do(job.stopped())
    assert job.state.status is JobStatus.TIMED_OUT


def test_a_stale_time_limit_is_refused() -> None:
    job = running(max_runtime=60)
    job.refuse(c.TimeOutJob(job_id=JOB, attempt=3, reason="x"), StaleAssignment, "stale_assignment")


def test_start_resumes_a_timed_out_job_from_its_checkpoint_with_a_fresh_limit() -> None:
    job = running(max_runtime=60)
    job.do(c.TimeOutJob(job_id=JOB, attempt=1, reason="reached its max_runtime"))
    job.do(job.checkpoint(CKPT_100))
    job.do(job.stopped(checkpoint=CKPT_100))
    assert job.state.runtime_s > 0
    (queued,) = job.do(c.StartJob(job_id=JOB))
    assert isinstance(queued, e.JobQueued)
    assert (queued.reason, queued.resume_from) == ("resumed", CKPT_100)
    assert job.state.runtime_s == 0


def test_a_time_limit_overrides_a_preemption_under_way() -> None:
    job = running(priority=2, max_runtime=60)
    job.do(preempt())
    (stop,) = job.do(c.TimeOutJob(job_id=JOB, attempt=1, reason="reached its max_runtime"))
    assert isinstance(stop, e.StopRequested) and stop.intent == "timeout"
    job.do(job.stopped())
    assert job.state.status is JobStatus.TIMED_OUT
