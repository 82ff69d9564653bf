"""Bounded scheduler state: jobs at rest are slimmed and capped, and still come back."""

from __future__ import annotations

import tracemalloc

import msgspec
import pytest
from tests.projections.conftest import heartbeat, spec
from tests.projections.scheduler.test_state import (
    T0,
    Log,
    claimed,
    scheduled,
    submitted,
)

from swift_trainer.core import events as e
from swift_trainer.core.ids import job_stream
from swift_trainer.core.job import JobState, JobStatus
from swift_trainer.core.store import RecordedEvent
from swift_trainer.projections.scheduler.dormant_jobs import DormantJobs
from swift_trainer.projections.scheduler.state import SchedulerState


def at_rest(job_id: str, n: int) -> e.Event:
    """Rotate over every way of coming to rest, and of ending for good."""
    match n % 4:
        case 0:
            return e.JobFailed(at=T0, job_id=job_id, attempt=1, exit_code=1, reason="boom")
        case 1:
            return e.JobStopped(at=T0, job_id=job_id, reason="stopped by user", attempt=1)
        case 2:
            return e.JobPaused(at=T0, job_id=job_id, reason="paused by user", attempt=1)
        case _:
            return e.JobSucceeded(at=T0, job_id=job_id, attempt=1)


class Feed(Log):
    """A log that forgets what it delivered, so memory measures the state alone."""

    def __init__(self) -> None:
        super().__init__()
        self.delivered = 0

    def add(self, *events: e.Event) -> list[RecordedEvent]:
        batch = [
            msgspec.structs.replace(x, position=x.position + self.delivered)
            for x in super().add(*events)
        ]
        self.delivered += len(batch)
        self.events = []
        return batch


def run_jobs(state: SchedulerState, log: Log, first: int, count: int) -> None:
    for n in range(first, first + count):
        job_id = f"j{n}"
        state.apply(log.add(*submitted(job_id)))
        state.apply(
            log.add(
                scheduled(job_id, 1, "r1", 0),
                e.JobStarted(
                    at=T0, job_id=job_id, attempt=1, runner_id="r1", pid=1, command=("swift",)
                ),
                at_rest(job_id, n),
            )
        )


def with_runner(limit: int) -> SchedulerState:
    state = SchedulerState(max_jobs_at_rest=limit)
    state.update_runner(heartbeat("r1", gpus=2, at=T0, lease_s=60))
    return state


def test_memory_stays_bounded_over_many_finished_jobs() -> None:
    state, log = with_runner(limit=50), Feed()
    run_jobs(state, log, 0, 1_000)  # warm up: the bound is reached
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        run_jobs(state, log, 1_000, 4_000)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 256 * 1024, f"the scheduler state grew by {grown} bytes over 4,000 jobs"
    assert state.jobs == {}
    assert state.seqs == {}
    assert len(state.dormant) == 50
    assert state.dormant.evicted == 3 * 5_000 // 4 - 50
    assert (state.refusals, state.cooling, state.entered, state.absent) == ({}, {}, {}, {})
    assert state.pending == {} and state.forgotten == {}
    assert state.placement.queue_length == 0
    assert state.placement.running_jobs() == []


def test_a_job_at_rest_queued_again_still_places() -> None:
    state, log = with_runner(limit=10), Log()
    run_jobs(state, log, 0, 1)  # j0 failed
    assert "j0" in state.dormant and "j0" not in state.jobs
    state.apply(
        log.add(e.JobQueued(at=T0, job_id="j0", priority=7, reason="resumed", resume_from=None))
    )
    assert "j0" not in state.dormant
    (decision,) = state.placement.place().decisions
    assert (decision.job_id, decision.attempt) == ("j0", 2)
    assert state.jobs["j0"].priority == 7
    assert state.seqs["j0"] == 1, "a requeued job keeps the place its submission earned"


def test_a_job_let_go_at_rest_is_rebuilt_from_its_stored_stream() -> None:
    state, log = with_runner(limit=1), Log()
    run_jobs(state, log, 0, 3)  # j0 failed, j1 stopped, j2 paused: only j2 is kept
    assert "j0" not in state.dormant and state.dormant.evicted == 2
    state.apply(log.add(e.JobQueued(at=T0, job_id="j0", priority=5, reason="resumed")))
    assert state.placement.place().decisions == (), "nothing to place until it is rebuilt"
    assert list(state.forgotten) == ["j0"]
    state.apply(log.add(e.JobPriorityChanged(at=T0, job_id="j0", old_priority=5, new_priority=9)))
    stored = [x for x in log.events if x.stream_id == job_stream("j0")]
    # The store may already hold events the feed has not delivered: those wait for the feed.
    ahead = log.add(scheduled("j0", 2, "r1", 1))
    state.position -= 1
    assert state.restore("j0", [*stored, *ahead], T0)
    assert state.forgotten == {}
    restored = state.jobs["j0"]
    assert (restored.status, restored.attempt, restored.priority) == (JobStatus.QUEUED, 1, 9)
    (decision,) = state.placement.place().decisions
    assert (decision.job_id, decision.attempt) == ("j0", 2)
    assert not state.restore("j0", stored, T0), "only a forgotten job is rebuilt"


def test_no_claim_of_a_job_being_read_back_is_touched() -> None:
    state, log = with_runner(limit=0), Log()
    run_jobs(state, log, 0, 1)
    state.apply(log.add(e.JobQueued(at=T0, job_id="j0", priority=5, reason="resumed")))
    state.apply(log.add(claimed("j0", 2, "r1", 1)))
    assert state.reconcile() == [], "released, it could hand the GPU out twice"
    stored = [x for x in log.events if x.stream_id == job_stream("j0")]
    assert state.restore("j0", stored, T0)
    assert [(a.kind, a.claim.job_id) for a in state.reconcile()] == [("complete", "j0")]
    assert state.placement.running_job("j0") is not None, "it holds the claimed GPU"


def test_the_dormant_map_slims_and_evicts_the_oldest() -> None:
    jobs = DormantJobs(limit=2)
    full = JobState(
        job_id="a",
        status=JobStatus.FAILED,
        spec=spec("a"),
        attempt=3,
        command=("swift", "sft"),
        failure_reason="boom",
    )
    jobs.keep(full, seq=4)
    jobs.keep(JobState(job_id="b", status=JobStatus.STOPPED), seq=5)
    jobs.keep(full, seq=4)  # kept again: now the newest
    jobs.keep(JobState(job_id="c", status=JobStatus.PAUSED), seq=6)
    assert ("a" in jobs, "b" in jobs, "c" in jobs) == (True, False, True)
    assert jobs.evicted == 1
    kept = jobs.take("a")
    assert kept is not None
    slim, seq = kept
    assert (slim.spec, slim.attempt, seq) == (full.spec, 3, 4)
    assert (slim.command, slim.failure_reason) == ((), None)
    assert jobs.take("a") is None and len(jobs) == 1
    with pytest.raises(ValueError, match="0 or more"):
        DormantJobs(limit=-1)
