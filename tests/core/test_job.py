"""Unit tests of the Job aggregate: every lifecycle transition and every refusal.

Each refusal is checked for its stable error code and for a message that names the job, so
that the user (or the runner) knows which job to act on.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.errors import (
    DomainError,
    InvalidSpec,
    InvalidTransition,
    JobAlreadyExists,
    JobNotFound,
    NoCheckpoint,
    StaleAssignment,
)
from swift_trainer.core.failure import Failure
from swift_trainer.core.job import (
    ACTIVE,
    FINISHED,
    STATUS_AFTER,
    Checkpoint,
    JobState,
    JobStatus,
    decide,
    evolve,
    initial_state,
    replay,
    status_after,
)
from swift_trainer.core.spec import Dependency, JobSpec, TrainArgs

JOB = "training_001"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
RUNNER, OTHER = "gpu-host-1", "gpu-host-2"
CKPT_100 = "output/training_001/v0-20250301/checkpoint-100"
CKPT_200 = "output/training_001/v0-20250301/checkpoint-200"


# --- helpers --------------------------------------------------------------------------------


class Job:
    """A job under test: its state, its history, and a clock that ticks per command."""

    def __init__(self) -> None:
        self.state = initial_state(JOB)
        self.history: list[e.AnyJobEvent] = []
        self.now = T0

    def do(self, command: c.AnyJobCommand) -> list[e.AnyJobEvent]:
        """Decide and apply ``command``; return the events it recorded."""
        self.now += timedelta(seconds=1)
        events = decide(self.state, command, self.now)
        for event in events:
            assert (event.at, event.job_id) == (self.now, JOB), "when it was decided, and whose"
            stored = e.decode_event(e.event_type(event), e.encode_event(event))
            assert stored == event, "the event decodes as stored: every field fits its type"
            self.state = evolve(self.state, event)
        self.history.extend(events)
        assert replay(JOB, self.history) == self.state
        types = [e.event_type(event) for event in events]
        told = self.state.status if any(t in STATUS_AFTER for t in types) else None
        assert status_after(types) == told, "the event types tell the new status"
        return events

    def refuse(self, command: c.AnyJobCommand, error: type[DomainError], code: str) -> str:
        """Assert ``command`` is refused with exactly ``error``; return its message."""
        before = self.state
        with pytest.raises(DomainError) as info:
            decide(self.state, command, self.now)
        assert type(info.value) is error
        assert info.value.code == code
        assert JOB in info.value.message, "the message names the job"
        assert str(info.value) == f"{code}: {info.value.message}"
        assert self.state is before
        return info.value.message

    # -- commands, with the job's current attempt and runner unless told otherwise ---------

    def _attempt(self, attempt: int | None) -> int:
        return self.state.attempt if attempt is None else attempt

    def _runner(self, runner: str | None) -> str:
        return runner or self.state.runner_id or self.state.last_runner_id or RUNNER

    def schedule(
        self, attempt: int | None = None, runner: str = RUNNER, gpus: tuple[int, ...] | None = None
    ) -> list[e.AnyJobEvent]:
        assert self.state.spec is not None
        return self.do(self.schedule_cmd(attempt, runner, gpus))

    def schedule_cmd(
        self, attempt: int | None = None, runner: str = RUNNER, gpus: tuple[int, ...] | None = None
    ) -> c.ScheduleJob:
        count = self.state.spec.gpu_count if self.state.spec else 1
        return c.ScheduleJob(
            job_id=JOB,
            attempt=self.state.attempt + 1 if attempt is None else attempt,
            runner_id=runner,
            gpu_ids=tuple(range(count)) if gpus is None else gpus,
            gpu_uuids=tuple(f"GPU-{i}" for i in range(count)),
        )

    def started(self, attempt: int | None = None, runner: str | None = None) -> c.ReportStarted:
        return c.ReportStarted(
            job_id=JOB,
            attempt=self._attempt(attempt),
            runner_id=self._runner(runner),
            pid=4242,
            command=("swift", "sft", "--model", "Qwen/Qwen2.5-VL-7B-Instruct"),
        )

    def checkpoint(
        self, path: str, step: int = 100, attempt: int | None = None, runner: str | None = None
    ) -> c.ReportCheckpoint:
        return c.ReportCheckpoint(
            job_id=JOB,
            attempt=self._attempt(attempt),
            runner_id=self._runner(runner),
            step=step,
            path=path,
        )

    def progress(self, step: int = 10, attempt: int | None = None) -> c.ReportProgress:
        return c.ReportProgress(
            job_id=JOB,
            attempt=self._attempt(attempt),
            runner_id=self._runner(None),
            step=step,
            max_steps=1000,
            epoch=0.01,
            loss=1.25,
            learning_rate=1e-4,
            grad_norm=0.5,
            elapsed_s=30.0,
            remaining_s=2970.0,
            memory_gib=21.5,
            train_speed=0.33,
            eval_loss=1.5,
        )

    def succeeded(self, attempt: int | None = None, runner: str | None = None) -> c.ReportSucceeded:
        return c.ReportSucceeded(
            job_id=JOB,
            attempt=self._attempt(attempt),
            runner_id=self._runner(runner),
            final_step=1000,
            output_path="output/training_001/v0-20250301",
        )

    def failed(self, attempt: int | None = None, runner: str | None = None) -> c.ReportFailed:
        return c.ReportFailed(
            job_id=JOB,
            attempt=self._attempt(attempt),
            runner_id=self._runner(runner),
            exit_code=1,
            reason="CUDA out of memory",
            stderr_tail="torch.OutOfMemoryError",
        )

    def stopped(self, checkpoint: str | None = None, attempt: int | None = None) -> c.ReportStopped:
        return c.ReportStopped(
            job_id=JOB,
            attempt=self._attempt(attempt),
            runner_id=self._runner(None),
            checkpoint=checkpoint,
        )

    def lost(self, attempt: int | None = None) -> c.MarkLost:
        return c.MarkLost(job_id=JOB, attempt=self._attempt(attempt), reason="lease expired")

    def reject(self, attempt: int | None = None, runner: str | None = None) -> c.RejectAssignment:
        return c.RejectAssignment(
            job_id=JOB,
            attempt=self._attempt(attempt),
            runner_id=self._runner(runner),
            reason="GPU 0 is busy with a foreign process",
        )


def spec(**overrides: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "data_path": "AI-ModelScope/coco#20000",
        "model_path": "Qwen/Qwen2.5-VL-7B-Instruct",
        "output_dir": "output/training_001",
        "priority": 9,
    }
    return JobSpec(**{**fields, **overrides})


def submitted(**overrides: Any) -> Job:
    job = Job()
    job.do(c.SubmitJob(job_id=JOB, spec=spec(**overrides)))
    return job


def scheduled(**overrides: Any) -> Job:
    job = submitted(**overrides)
    job.schedule()
    return job


def running(**overrides: Any) -> Job:
    job = scheduled(**overrides)
    job.do(job.started())
    return job


def finished(status: JobStatus, *, checkpoints: tuple[str, ...] = (CKPT_100,), **kw: Any) -> Job:
    """A job that ran on RUNNER, saved ``checkpoints`` and ended in ``status``."""
    job = running(**kw)
    for step, path in enumerate(checkpoints, start=1):
        job.do(job.checkpoint(path, step=100 * step))
    if status is JobStatus.SUCCEEDED:
        job.do(job.succeeded())
    elif status is JobStatus.FAILED:
        job.do(job.failed())
    elif status is JobStatus.PAUSED:
        job.do(c.PauseJob(job_id=JOB))
        job.do(job.stopped())
    elif status is JobStatus.CANCELLED:
        job.do(c.CancelJob(job_id=JOB))
        job.do(job.stopped())
    elif status is JobStatus.TIMED_OUT:
        job.do(c.TimeOutJob(job_id=JOB, attempt=job.state.attempt, reason="max_runtime 5s"))
        job.do(job.stopped())
    else:
        job.do(c.StopJob(job_id=JOB))
        job.do(job.stopped())
    assert job.state.status is status
    return job


def in_status(status: JobStatus) -> Job:
    """A job resting in ``status``, reached the ordinary way."""
    match status:
        case JobStatus.HELD:
            return submitted(auto_start=False)
        case JobStatus.WAITING:
            return submitted(after=(Dependency(job="other"),))
        case JobStatus.QUEUED:
            return submitted()
        case JobStatus.SCHEDULED:
            return scheduled()
        case JobStatus.RUNNING:
            return running()
        case JobStatus.STOPPING:
            job = running()
            job.do(c.StopJob(job_id=JOB))
            return job
        case JobStatus.DELETED:
            job = submitted()
            job.do(c.DeleteJob(job_id=JOB))
            return job
        case _:
            return finished(status)


# --- submit ---------------------------------------------------------------------------------


def test_submit_queues_the_job_at_its_priority() -> None:
    job = Job()
    events = job.do(c.SubmitJob(job_id=JOB, spec=spec(priority=7)))
    assert events == [
        e.JobSubmitted(at=job.now, job_id=JOB, spec=spec(priority=7)),
        e.JobQueued(at=job.now, job_id=JOB, priority=7, reason="submitted"),
    ]
    state = job.state
    assert state.status is JobStatus.QUEUED
    assert (state.priority, state.attempt, state.retries, state.version) == (7, 0, 0, 2)
    assert state.spec == spec(priority=7)
    assert state.submitted_at == job.now
    assert state.exists


def test_submit_with_auto_start_false_holds_the_job() -> None:
    job = Job()
    events = job.do(c.SubmitJob(job_id=JOB, spec=spec(auto_start=False)))
    assert [type(x) for x in events] == [e.JobSubmitted, e.JobHeld]
    assert job.state.status is JobStatus.HELD
    assert job.state.priority == 9


@pytest.mark.parametrize("status", [s for s in JobStatus if s not in (JobStatus.NEW, "deleted")])
def test_submit_of_an_existing_id_is_refused(status: JobStatus) -> None:
    job = in_status(status)
    message = job.refuse(
        c.SubmitJob(job_id=JOB, spec=spec()), JobAlreadyExists, "job_already_exists"
    )
    assert "choose another id or delete it" in message


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"priority": 11}, "priority"),
        ({"priority": -1}, "priority"),
        ({"gpu_count": 0}, "gpu_count"),
        ({"gpu_count": 65}, "gpu_count"),
        ({"max_retries": 21}, "max_retries"),
        ({"train_args": TrainArgs(batch_size=0)}, "batch_size"),
        ({"train_args": TrainArgs(learning_rate=-1.0)}, "learning_rate"),
    ],
)
def test_submit_revalidates_a_spec_built_in_code(overrides: dict[str, Any], field: str) -> None:
    """msgspec checks constraints only on decode; decide must not trust a spec built in code."""
    bad = spec(**overrides)  # constructing does not check ranges
    message = Job().refuse(c.SubmitJob(job_id=JOB, spec=bad), InvalidSpec, "invalid_spec")
    assert field in message
    assert "submit again" in message


NOT_SUBMIT = [
    c.StartJob(job_id=JOB),
    c.StopJob(job_id=JOB),
    c.PauseJob(job_id=JOB),
    c.ResumeJob(job_id=JOB),
    c.CancelJob(job_id=JOB),
    c.ChangePriority(job_id=JOB, priority=1),
    c.ReleaseWaitingJob(job_id=JOB),
    c.RequestExport(job_id=JOB),
    c.DeleteJob(job_id=JOB),
    c.ScheduleJob(job_id=JOB, attempt=1, runner_id=RUNNER, gpu_ids=(0,)),
    c.MarkLost(job_id=JOB, attempt=1),
    c.PreemptJob(job_id=JOB, attempt=1, preempted_by="other", reason="x", grace_s=1.0),
    c.TimeOutJob(job_id=JOB, attempt=1, reason="x"),
    c.ReportStarted(job_id=JOB, attempt=1, runner_id=RUNNER, pid=1, command=()),
    c.RejectAssignment(job_id=JOB, attempt=1, runner_id=RUNNER, reason="x"),
    c.ReportProgress(job_id=JOB, attempt=1, runner_id=RUNNER, step=1),
    c.ReportCheckpoint(job_id=JOB, attempt=1, runner_id=RUNNER, step=1, path=CKPT_100),
    c.ReportCheckpointsRemoved(job_id=JOB, attempt=1, runner_id=RUNNER, paths=(CKPT_100,)),
    c.RequeueJob(job_id=JOB, reason="runner drained"),
    c.FlagJob(job_id=JOB, attempt=1, warning="idle", reason="idle"),
    c.ReportSucceeded(job_id=JOB, attempt=1, runner_id=RUNNER),
    c.ReportFailed(job_id=JOB, attempt=1, runner_id=RUNNER, exit_code=1, reason="x"),
    c.ReportStopped(job_id=JOB, attempt=1, runner_id=RUNNER),
    c.ReportRendezvous(job_id=JOB, attempt=1, runner_id=RUNNER, master_addr="h", master_port=1),
    c.ReportExportStarted(job_id=JOB, export_id="x", runner_id=RUNNER, pid=1),
    c.ReportExportSucceeded(job_id=JOB, export_id="x", runner_id=RUNNER, artifact_path="a"),
    c.ReportExportFailed(job_id=JOB, export_id="x", runner_id=RUNNER, exit_code=1, reason="x"),
]


def test_every_command_but_submit_is_covered_by_the_not_found_table() -> None:
    assert {type(x) for x in NOT_SUBMIT} | {c.SubmitJob} == set(c.AnyJobCommand.__args__)


@pytest.mark.parametrize("command", NOT_SUBMIT, ids=lambda x: type(x).__name__)
@pytest.mark.parametrize("deleted", [False, True], ids=["never-submitted", "deleted"])
def test_commands_for_a_missing_job_are_refused_as_not_found(
    command: c.AnyJobCommand, deleted: bool
) -> None:
    job = in_status(JobStatus.DELETED) if deleted else Job()
    message = job.refuse(command, JobNotFound, "job_not_found")
    assert message == f"job {JOB!r} does not exist"


# --- start ----------------------------------------------------------------------------------


def test_start_releases_a_held_job_into_the_queue() -> None:
    job = submitted(auto_start=False, priority=3)
    events = job.do(c.StartJob(job_id=JOB))
    assert events == [
        e.JobReleased(at=job.now, job_id=JOB),
        e.JobQueued(at=job.now, job_id=JOB, priority=3, reason="released"),
    ]
    assert job.state.status is JobStatus.QUEUED


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING])
def test_start_of_a_job_already_on_its_way_is_a_no_op(status: JobStatus) -> None:
    job = in_status(status)
    assert job.do(c.StartJob(job_id=JOB)) == []
    assert job.state.status is status


def test_start_resumes_a_stopped_job_from_its_last_checkpoint_with_retries_reset() -> None:
    job = running(max_retries=2)
    job.do(job.lost())  # one retry used
    job.schedule(runner=OTHER)
    job.do(job.started())
    job.do(job.checkpoint(CKPT_100, step=100))
    job.do(job.checkpoint(CKPT_200, step=200))
    job.do(c.StopJob(job_id=JOB, reason="free the GPUs"))
    job.do(job.stopped())
    assert (job.state.status, job.state.retries) == (JobStatus.STOPPED, 1)

    events = job.do(c.StartJob(job_id=JOB))

    assert events == [
        e.JobQueued(at=job.now, job_id=JOB, priority=9, reason="resumed", resume_from=CKPT_200)
    ]
    state = job.state
    assert state.status is JobStatus.QUEUED
    assert (state.retries, state.resume_from, state.stop_reason) == (0, CKPT_200, None)
    assert state.finished_at is None
    # The next placement carries the checkpoint to resume from to the runner.
    (placed,) = job.schedule(runner=RUNNER)
    assert isinstance(placed, e.JobScheduled)
    assert (placed.attempt, placed.resume_from) == (3, CKPT_200)


def test_start_resumes_a_failed_job_and_forgets_the_failure() -> None:
    job = finished(JobStatus.FAILED)
    failed = job.state
    assert (failed.failure_reason, failed.exit_code) == ("CUDA out of memory", 1)
    (queued,) = job.do(c.StartJob(job_id=JOB))
    assert queued == e.JobQueued(
        at=job.now, job_id=JOB, priority=9, reason="resumed", resume_from=CKPT_100
    )
    assert (job.state.failure_reason, job.state.exit_code) == (None, None)


def test_start_of_a_job_stopped_before_any_checkpoint_starts_from_scratch() -> None:
    job = submitted()
    job.do(c.StopJob(job_id=JOB))
    (queued,) = job.do(c.StartJob(job_id=JOB))
    assert isinstance(queued, e.JobQueued)
    assert queued.resume_from is None
    assert job.state.status is JobStatus.QUEUED


def test_start_of_a_succeeded_job_is_refused() -> None:
    job = finished(JobStatus.SUCCEEDED)
    message = job.refuse(c.StartJob(job_id=JOB), InvalidTransition, "invalid_transition")
    assert "submit a new job" in message


def test_start_of_a_stopping_job_is_refused_until_it_has_stopped() -> None:
    job = in_status(JobStatus.STOPPING)
    message = job.refuse(c.StartJob(job_id=JOB), InvalidTransition, "invalid_transition")
    assert "wait until it has stopped" in message


# --- ending a job that waits to run again -------------------------------------------------


def requeued_after_a_checkpoint() -> Job:
    """Queued again after its runner was lost, with a checkpoint to resume from."""
    job = running()
    job.do(job.checkpoint(CKPT_100))
    job.do(job.lost())
    assert job.state.status is JobStatus.QUEUED
    return job


def test_cancel_or_pause_of_a_queued_job_keeps_its_checkpoint_in_the_event() -> None:
    job = requeued_after_a_checkpoint()
    assert job.do(c.CancelJob(job_id=JOB, reason="not needed")) == [
        e.JobCancelled(at=job.now, job_id=JOB, reason="not needed", attempt=1, checkpoint=CKPT_100)
    ]
    job = requeued_after_a_checkpoint()
    assert job.do(c.PauseJob(job_id=JOB, reason="later")) == [
        e.JobPaused(at=job.now, job_id=JOB, reason="later", attempt=1, checkpoint=CKPT_100)
    ]


def stop_request(job: Job, reason: str, intent: str) -> e.StopRequested:
    return e.StopRequested(
        at=job.now, job_id=JOB, reason=reason, runner_id=RUNNER, attempt=1, intent=intent
    )


def test_a_cancel_turns_a_stop_under_way_into_a_cancel_once() -> None:
    job = running()
    job.do(c.StopJob(job_id=JOB))
    cancel = c.CancelJob(job_id=JOB, reason="not needed")
    assert job.do(cancel) == [stop_request(job, "not needed", "cancel")]
    assert job.do(cancel) == []


@pytest.mark.parametrize(
    "first",
    [
        c.TimeOutJob(job_id=JOB, attempt=1, reason="max_runtime"),
        c.PreemptJob(job_id=JOB, attempt=1, preempted_by="urgent", reason="r", grace_s=60),
    ],
)
def test_a_pause_turns_a_time_limit_or_a_preemption_into_a_pause(first: c.AnyJobCommand) -> None:
    job = running()
    job.do(first)
    pause = c.PauseJob(job_id=JOB, reason="later")
    assert job.do(pause) == [stop_request(job, "later", "pause")]
    assert job.do(pause) == []
    job.do(job.stopped())
    assert job.state.status is JobStatus.PAUSED
    assert job.do(pause) == [], "paused already"


def test_stop_of_a_requeued_job_names_its_attempt() -> None:
    job = requeued_after_a_checkpoint()
    assert job.do(c.StopJob(job_id=JOB, reason="enough")) == [
        e.JobStopped(at=job.now, job_id=JOB, reason="enough", attempt=1)
    ]


def test_a_users_stop_takes_over_a_time_limit_under_way() -> None:
    job = running()
    job.do(c.TimeOutJob(job_id=JOB, attempt=1, reason="max_runtime"))
    assert job.do(c.StopJob(job_id=JOB, reason="enough")) == [stop_request(job, "enough", "stop")]
    job.do(job.stopped())
    assert job.state.status is JobStatus.STOPPED


# --- runner reports in full ---------------------------------------------------------------


def test_a_start_report_keeps_the_runners_warnings() -> None:
    job = scheduled()
    started = msgspec.structs.replace(job.started(), warnings=("tracker unreachable",))
    (event,) = job.do(started)
    assert isinstance(event, e.JobStarted) and event.warnings == ("tracker unreachable",)


def test_a_success_report_keeps_the_evaluation() -> None:
    job = running()
    report = msgspec.structs.replace(
        job.succeeded(), eval_results={"ceval": 0.5}, eval_error="mmlu: no dataset"
    )
    (event,) = job.do(report)
    assert isinstance(event, e.JobSucceeded)
    assert (event.eval_results, event.eval_error) == ({"ceval": 0.5}, "mmlu: no dataset")


def test_a_process_failing_during_a_cancel_ends_the_job_cancelled_with_its_checkpoint() -> None:
    job = running()
    job.do(job.checkpoint(CKPT_100))
    job.do(c.CancelJob(job_id=JOB))
    _, cancelled = job.do(job.failed())
    assert cancelled == e.JobCancelled(
        at=job.now, job_id=JOB, reason="CUDA out of memory", attempt=1, checkpoint=CKPT_100
    )


def test_a_process_killed_at_the_end_of_a_time_limits_grace_still_times_out() -> None:
    job = running()
    job.do(job.checkpoint(CKPT_100))
    job.do(c.TimeOutJob(job_id=JOB, attempt=1, reason="reached its max_runtime"))
    assert job.do(job.failed()) == [
        e.JobTimedOut(
            at=job.now,
            job_id=JOB,
            reason="reached its max_runtime",
            attempt=1,
            checkpoint=CKPT_100,
        )
    ]


def test_a_process_killed_at_the_end_of_a_time_limits_grace_without_a_checkpoint() -> None:
    job = running()
    job.do(c.TimeOutJob(job_id=JOB, attempt=1, reason="reached its max_runtime"))
    (ended,) = job.do(job.failed())
    assert isinstance(ended, e.JobTimedOut) and ended.checkpoint is None


def test_a_process_killed_during_a_requeue_is_queued_from_its_checkpoint() -> None:
    job = running()
    job.do(job.checkpoint(CKPT_100))
    job.do(c.RequeueJob(job_id=JOB, reason="making room"))
    (requeued,) = job.do(job.failed())
    assert isinstance(requeued, e.JobRequeued)
    assert (requeued.reason, requeued.resume_from) == ("making room", CKPT_100)


def test_a_stop_the_runner_reports_unasked_ends_the_job_stopped() -> None:
    job = running()
    job.do(job.checkpoint(CKPT_100))
    assert job.do(job.stopped()) == [
        e.JobStopped(
            at=job.now,
            job_id=JOB,
            reason="stopped on the runner",
            attempt=1,
            checkpoint=CKPT_100,
        )
    ]


def test_a_stale_report_says_where_the_current_attempt_is() -> None:
    job = running()
    stale = job.progress(attempt=3)
    assert job.refuse(stale, StaleAssignment, "stale_assignment") == (
        "report from runner 'gpu-host-1' for attempt 3 of job 'training_001', whose current "
        "attempt is 1 (on 'gpu-host-1'): the process should be stopped"
    )
    job = in_status(JobStatus.QUEUED)
    assert job.refuse(job.progress(attempt=1), StaleAssignment, "stale_assignment") == (
        "report from runner 'gpu-host-1' for attempt 1 of job 'training_001', whose current "
        "attempt is 0 (queued): the process should be stopped"
    )


# --- the state each event leaves --------------------------------------------------------------


def test_a_start_records_the_process_its_command_and_warnings() -> None:
    job = scheduled()
    job.do(msgspec.structs.replace(job.started(), warnings=("tracker unreachable",)))
    state = job.state
    assert (state.pid, state.command) == (4242, job.started().command)
    assert state.start_warnings == ("tracker unreachable",)


def test_a_checkpoint_records_when_it_was_saved() -> None:
    job = running()
    job.do(job.checkpoint(CKPT_100))
    assert job.state.checkpointed_at == job.now


def test_a_success_records_the_evaluation_in_the_state() -> None:
    job = running()
    job.do(msgspec.structs.replace(job.succeeded(), eval_results={"ceval": 0.5}, eval_error="e"))
    assert (job.state.eval_results, job.state.eval_error) == ({"ceval": 0.5}, "e")


def test_a_preemption_records_its_preemptor_and_gpus_and_an_end_clears_them() -> None:
    job = running()
    job.do(
        c.PreemptJob(
            job_id=JOB,
            attempt=1,
            preempted_by="urgent",
            reason="r",
            grace_s=60,
            reserved_gpu_ids=(0, 1),
        )
    )
    assert (job.state.preempted_by, job.state.preempt_gpu_ids) == ("urgent", (0, 1))
    job.do(c.CancelJob(job_id=JOB, reason="not needed"))
    assert (job.state.preempted_by, job.state.preempt_gpu_ids) == (None, ())
    job.do(job.stopped())
    state = job.state
    assert (state.status, state.stop_intent, state.preempted_by) == (
        JobStatus.CANCELLED,
        "stop",
        None,
    )
    assert (state.finished_at, state.stop_reason, state.preempt_gpu_ids) == (
        job.now,
        "not needed",
        (),
    )


def test_an_end_by_pause_or_time_limit_records_when_and_why() -> None:
    job = running()
    job.do(c.PauseJob(job_id=JOB, reason="later"))
    job.do(job.stopped())
    assert (job.state.finished_at, job.state.stop_reason) == (job.now, "later")
    job = running()
    job.do(c.TimeOutJob(job_id=JOB, attempt=1, reason="max_runtime"))
    job.do(job.stopped())
    assert (job.state.finished_at, job.state.stop_reason) == (job.now, "max_runtime")


def test_a_requeue_leaves_no_runner_gpus_or_process_behind() -> None:
    job = running()
    job.do(job.lost())
    state = job.state
    assert (state.runner_id, state.gpu_ids, state.pid, state.peers) == (None, (), None, ())
    assert state.last_runner_id == RUNNER


def test_a_requested_export_and_a_warning_are_recorded_in_full() -> None:
    job = finished(JobStatus.SUCCEEDED)
    job.do(c.RequestExport(job_id=JOB))
    (export,) = job.state.exports
    assert (export.export_id, export.checkpoint, export.runner_id) == (
        f"{JOB}-export-1",
        CKPT_100,
        RUNNER,
    )
    job = running()
    job.do(c.FlagJob(job_id=JOB, attempt=1, warning="idle", reason="GPUs idle"))
    (warning,) = job.state.warnings
    assert (warning.kind, warning.reason, warning.at, warning.attempt) == (
        "idle",
        "GPUs idle",
        job.now,
        1,
    )


# --- waiting on other jobs -----------------------------------------------------------------
def test_a_job_that_waits_for_itself_is_refused() -> None:
    job = Job()
    own = c.SubmitJob(job_id=JOB, spec=spec(after=(Dependency(job=JOB),)))
    assert job.refuse(own, InvalidSpec, "invalid_spec") == (
        "job 'training_001' cannot wait for itself: remove it from after"
    )


AFTER = (Dependency(job="other"),)


def test_a_held_job_with_conditions_waits_when_started() -> None:
    job = submitted(auto_start=False, after=AFTER)
    assert job.do(c.StartJob(job_id=JOB)) == [
        e.JobReleased(at=job.now, job_id=JOB),
        e.JobWaiting(at=job.now, job_id=JOB),
    ]
    assert job.state.status is JobStatus.WAITING


def test_the_release_queues_a_waiting_job_once() -> None:
    job = in_status(JobStatus.WAITING)
    release = c.ReleaseWaitingJob(job_id=JOB)
    assert job.do(release) == [
        e.JobQueued(at=job.now, job_id=JOB, priority=9, reason="dependencies met")
    ]
    assert job.do(release) == [], "a queued job has left the wait already"


@pytest.mark.parametrize("how", [c.StopJob(job_id=JOB), c.PauseJob(job_id=JOB)])
def test_a_job_stopped_while_it_waited_waits_again_when_started(how: c.AnyJobCommand) -> None:
    job = in_status(JobStatus.WAITING)
    job.do(how)
    assert job.do(c.StartJob(job_id=JOB)) == [e.JobWaiting(at=job.now, job_id=JOB)]


def test_a_job_with_conditions_that_has_run_is_queued_when_started_again() -> None:
    job = in_status(JobStatus.WAITING)
    job.do(c.ReleaseWaitingJob(job_id=JOB))
    job.schedule()
    job.do(job.started())
    job.do(c.StopJob(job_id=JOB))
    job.do(job.stopped())
    (queued,) = job.do(c.StartJob(job_id=JOB))
    assert isinstance(queued, e.JobQueued) and queued.reason == "resumed"


# --- stop -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [JobStatus.HELD, JobStatus.QUEUED])
def test_stop_of_a_waiting_job_stops_it_at_once(status: JobStatus) -> None:
    job = in_status(status)
    events = job.do(c.StopJob(job_id=JOB, reason="not needed"))
    assert events == [e.JobStopped(at=job.now, job_id=JOB, reason="not needed", attempt=0)]
    assert job.state.status is JobStatus.STOPPED
    assert job.state.stop_reason == "not needed"
    assert job.state.finished_at == job.now


@pytest.mark.parametrize("status", [JobStatus.SCHEDULED, JobStatus.RUNNING])
def test_stop_of_a_placed_job_asks_its_runner_then_the_report_stops_it(
    status: JobStatus,
) -> None:
    job = in_status(status)
    events = job.do(c.StopJob(job_id=JOB, reason="wrong dataset"))
    assert events == [
        e.StopRequested(at=job.now, job_id=JOB, reason="wrong dataset", runner_id=RUNNER, attempt=1)
    ]
    stopping = job.state
    assert stopping.status is JobStatus.STOPPING
    assert stopping.runner_id == RUNNER, "the runner keeps its GPUs until it has stopped"
    assert stopping.gpu_ids == (0,)

    events = job.do(job.stopped(checkpoint=CKPT_100))

    assert events == [
        e.JobStopped(at=job.now, job_id=JOB, reason="wrong dataset", attempt=1, checkpoint=CKPT_100)
    ]
    assert job.state.status is JobStatus.STOPPED
    assert (job.state.runner_id, job.state.gpu_ids) == (None, ())


def test_stopped_report_without_a_checkpoint_names_the_last_one_saved() -> None:
    job = running()
    job.do(job.checkpoint(CKPT_100))
    job.do(c.StopJob(job_id=JOB))
    (stopped,) = job.do(job.stopped())
    assert isinstance(stopped, e.JobStopped)
    assert stopped.checkpoint == CKPT_100
    assert stopped.reason == "stopped by user"


def test_stop_of_a_stopping_job_is_a_no_op() -> None:
    job = in_status(JobStatus.STOPPING)
    assert job.do(c.StopJob(job_id=JOB, reason="again")) == []
    assert job.state.stop_reason == "stopped by user"


@pytest.mark.parametrize("status", sorted(FINISHED))
def test_stop_of_a_finished_job_is_refused(status: JobStatus) -> None:
    job = in_status(status)
    message = job.refuse(c.StopJob(job_id=JOB), InvalidTransition, "invalid_transition")
    assert "no longer running" in message


def test_runner_stopping_a_job_on_its_own_records_why() -> None:
    job = running()
    (stopped,) = job.do(job.stopped())
    assert isinstance(stopped, e.JobStopped)
    assert stopped.reason == "stopped on the runner"
    assert job.do(job.stopped()) == [], "a redelivered report is harmless"


# --- priority -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [JobStatus.HELD, JobStatus.QUEUED])
def test_priority_changes_while_the_job_waits(status: JobStatus) -> None:
    job = in_status(status)
    events = job.do(c.ChangePriority(job_id=JOB, priority=2))
    assert events == [e.JobPriorityChanged(at=job.now, job_id=JOB, old_priority=9, new_priority=2)]
    assert job.state.priority == 2
    assert job.do(c.ChangePriority(job_id=JOB, priority=2)) == [], "same priority: nothing"


def test_a_changed_priority_survives_release_and_requeue() -> None:
    job = submitted(auto_start=False)
    job.do(c.ChangePriority(job_id=JOB, priority=0))
    (_, queued) = job.do(c.StartJob(job_id=JOB))
    assert isinstance(queued, e.JobQueued)
    assert queued.priority == 0
    job.schedule()
    (_, requeued) = job.do(job.lost())
    assert isinstance(requeued, e.JobRequeued)
    assert requeued.priority == 0


@pytest.mark.parametrize(
    "status",
    [JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.STOPPING, *sorted(FINISHED)],
)
def test_priority_is_fixed_once_the_job_has_left_the_queue(status: JobStatus) -> None:
    job = in_status(status)
    message = job.refuse(
        c.ChangePriority(job_id=JOB, priority=1), InvalidTransition, "invalid_transition"
    )
    assert "only held, waiting or queued jobs" in message


@pytest.mark.parametrize("priority", [-1, 11, 100])
def test_priority_out_of_range_is_an_invalid_spec(priority: int) -> None:
    job = submitted()
    message = job.refuse(
        c.ChangePriority(job_id=JOB, priority=priority), InvalidSpec, "invalid_spec"
    )
    assert "0-10" in message


# --- schedule -------------------------------------------------------------------------------


def test_schedule_places_a_queued_job_on_a_runner() -> None:
    job = submitted(gpu_count=2)
    events = job.schedule(runner=OTHER, gpus=(3, 1))
    assert events == [
        e.JobScheduled(
            at=job.now,
            job_id=JOB,
            attempt=1,
            runner_id=OTHER,
            gpu_ids=(3, 1),
            gpu_uuids=("GPU-0", "GPU-1"),
        )
    ]
    state = job.state
    assert (state.status, state.attempt, state.runner_id, state.gpu_ids) == (
        JobStatus.SCHEDULED,
        1,
        OTHER,
        (3, 1),
    )
    assert state.pid is None


@pytest.mark.parametrize("attempt", [0, 2, 7])
def test_schedule_for_any_but_the_next_attempt_is_stale(attempt: int) -> None:
    job = submitted()
    message = job.refuse(job.schedule_cmd(attempt=attempt), StaleAssignment, "stale_assignment")
    assert "expected attempt 1" in message


def test_schedule_after_a_requeue_needs_the_following_attempt() -> None:
    job = running()
    job.do(job.lost())
    job.refuse(job.schedule_cmd(attempt=1), StaleAssignment, "stale_assignment")
    job.schedule(attempt=2, runner=OTHER)
    assert (job.state.attempt, job.state.runner_id) == (2, OTHER)


@pytest.mark.parametrize("gpus", [(), (0,), (0, 1, 2), (1, 1)], ids=repr)
def test_schedule_on_the_wrong_gpus_is_refused(gpus: tuple[int, ...]) -> None:
    job = submitted(gpu_count=2)
    message = job.refuse(job.schedule_cmd(gpus=gpus), InvalidTransition, "invalid_transition")
    assert "needs 2 distinct GPUs" in message


@pytest.mark.parametrize(
    "status",
    [JobStatus.HELD, JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.STOPPING, *FINISHED],
)
def test_only_queued_jobs_can_be_scheduled(status: JobStatus) -> None:
    job = in_status(status)
    message = job.refuse(job.schedule_cmd(), InvalidTransition, "invalid_transition")
    assert "only queued jobs" in message


# --- runner reports -------------------------------------------------------------------------


def test_started_report_marks_the_job_running() -> None:
    job = scheduled()
    events = job.do(job.started())
    assert events == [
        e.JobStarted(
            at=job.now,
            job_id=JOB,
            attempt=1,
            runner_id=RUNNER,
            pid=4242,
            command=("swift", "sft", "--model", "Qwen/Qwen2.5-VL-7B-Instruct"),
        )
    ]
    state = job.state
    assert state.status is JobStatus.RUNNING
    assert (state.pid, state.started_at, state.last_runner_id) == (4242, job.now, RUNNER)
    assert job.do(job.started()) == [], "a redelivered start is harmless"


def test_tracker_links_of_a_start_stay_with_the_job_across_attempts() -> None:
    job = scheduled()
    mlflow = {"mlflow": "http://mlflow:5000/#/experiments/1/runs/abc"}
    [started] = job.do(msgspec.structs.replace(job.started(), tracker_urls=mlflow))
    assert isinstance(started, e.JobStarted) and started.tracker_urls == mlflow
    assert job.state.tracker_urls == mlflow
    job.do(job.stopped())
    job.do(c.StartJob(job_id=JOB))
    job.schedule()
    wandb = {"wandb": "https://wandb.ai/team/p/runs/training_001"}
    job.do(msgspec.structs.replace(job.started(), tracker_urls=wandb))
    assert job.state.tracker_urls == {**mlflow, **wandb}, "an attempt without a link keeps it"


def test_a_tracker_link_is_a_web_address() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(
            {**msgspec.to_builtins(Job().started(1)), "tracker_urls": {"x": "javascript:x"}},
            c.ReportStarted,
        )


@pytest.mark.parametrize(
    ("attempt", "runner"), [(0, RUNNER), (2, RUNNER), (1, OTHER)], ids=["old", "future", "other"]
)
@pytest.mark.parametrize("status", [JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.STOPPING])
def test_reports_from_another_attempt_or_runner_are_stale(
    status: JobStatus, attempt: int, runner: str
) -> None:
    job = in_status(status)
    for report in (
        job.started(attempt, runner),
        job.progress(attempt=attempt),
        job.checkpoint(CKPT_100, attempt=attempt, runner=runner),
        job.succeeded(attempt, runner),
        job.failed(attempt, runner),
        job.reject(attempt, runner),
    ):
        if report.runner_id == RUNNER and report.attempt == 1:
            continue  # progress uses the job's runner: only its attempt can be off
        if isinstance(report, c.RejectAssignment) and status is not JobStatus.SCHEDULED:
            continue  # a started job cannot be rejected at all (tested below)
        message = job.refuse(report, StaleAssignment, "stale_assignment")
        assert "the process should be stopped" in message


def test_a_runner_back_after_its_job_was_requeued_is_told_to_stop() -> None:
    """A loss requeues the job under the same attempt number; the old runner is stale."""
    job = running()
    job.do(job.lost())
    assert job.state.status is JobStatus.QUEUED
    for report in (
        job.started(1, RUNNER),
        job.progress(attempt=1),
        job.checkpoint(CKPT_100, attempt=1, runner=RUNNER),
        job.succeeded(1, RUNNER),
        job.failed(1, RUNNER),
        job.stopped(attempt=1),
    ):
        job.refuse(report, StaleAssignment, "stale_assignment")
    # ...and once the job runs elsewhere, the old attempt is stale by its number too.
    job.schedule(runner=OTHER)
    job.refuse(job.started(1, RUNNER), StaleAssignment, "stale_assignment")


def test_progress_is_recorded_while_the_process_runs() -> None:
    job = running()
    (event,) = job.do(job.progress(step=10))
    assert event == e.JobProgressed(
        at=job.now,
        job_id=JOB,
        attempt=1,
        step=10,
        max_steps=1000,
        epoch=0.01,
        loss=1.25,
        learning_rate=1e-4,
        grad_norm=0.5,
        elapsed_s=30.0,
        remaining_s=2970.0,
        memory_gib=21.5,
        train_speed=0.33,
        eval_loss=1.5,
    )
    progress = job.state.progress
    assert progress is not None
    assert (progress.step, progress.max_steps, progress.loss, progress.at) == (
        10,
        1000,
        1.25,
        job.now,
    )
    job.do(c.StopJob(job_id=JOB))
    job.do(job.progress(step=11))
    assert job.state.progress is not None
    assert job.state.progress.step == 11, "a stopping job still reports progress"


@pytest.mark.parametrize("status", [JobStatus.SCHEDULED, *sorted(FINISHED)])
def test_progress_when_no_process_runs_is_refused(status: JobStatus) -> None:
    job = in_status(status)
    message = job.refuse(job.progress(), InvalidTransition, "invalid_transition")
    assert "ReportProgress" in message


def test_checkpoints_are_recorded_once_per_path() -> None:
    job = running()
    (event,) = job.do(job.checkpoint(CKPT_100, step=100))
    assert event == e.CheckpointSaved(at=job.now, job_id=JOB, attempt=1, step=100, path=CKPT_100)
    assert job.do(job.checkpoint(CKPT_100, step=100)) == []
    job.do(job.checkpoint(CKPT_200, step=200))
    assert job.state.checkpoints == (
        Checkpoint(step=100, path=CKPT_100, attempt=1),
        Checkpoint(step=200, path=CKPT_200, attempt=1),
    )
    last = job.state.last_checkpoint
    assert last is not None
    assert last.path == CKPT_200


@pytest.mark.parametrize("status", sorted(FINISHED))
def test_a_late_checkpoint_from_the_runner_that_ran_the_job_is_kept(status: JobStatus) -> None:
    job = finished(status, checkpoints=())
    (event,) = job.do(job.checkpoint(CKPT_200, step=200, runner=RUNNER))
    assert isinstance(event, e.CheckpointSaved)
    assert job.state.last_runner_id == RUNNER


@pytest.mark.parametrize("status", sorted(FINISHED))
def test_a_late_checkpoint_from_another_runner_is_refused(status: JobStatus) -> None:
    job = finished(status, checkpoints=())
    job.refuse(job.checkpoint(CKPT_200, runner=OTHER), InvalidTransition, "invalid_transition")


@pytest.mark.parametrize("how", ["stopped while queued", "failed at launch"])
def test_a_job_that_never_started_cannot_gain_checkpoints(how: str) -> None:
    """Regression: such a checkpoint made a later export crash on a missing runner."""
    job = submitted()
    if how == "stopped while queued":
        job.do(c.StopJob(job_id=JOB))
    else:
        job.schedule()
        job.do(job.failed())
    assert job.state.last_runner_id is None
    job.refuse(job.checkpoint(CKPT_100, runner=RUNNER), InvalidTransition, "invalid_transition")
    job.refuse(c.RequestExport(job_id=JOB), NoCheckpoint, "no_checkpoint")


def test_a_checkpoint_saved_before_the_start_report_arrived_is_exported_from_its_runner() -> None:
    """Regression: a stop can overtake the runner's start report; the checkpoint it saves
    still lives on that runner, so the export must go there (it used to crash)."""
    job = scheduled()
    job.do(c.StopJob(job_id=JOB))
    assert job.do(job.started()) == [], "a start report while stopping records nothing"
    job.do(job.checkpoint(CKPT_100))
    job.do(job.stopped())
    (export,) = job.do(c.RequestExport(job_id=JOB))
    assert isinstance(export, e.ExportRequested)
    assert (export.runner_id, export.checkpoint) == (RUNNER, CKPT_100)


def test_succeeded_report_finishes_the_job_and_frees_its_gpus() -> None:
    job = running()
    events = job.do(job.succeeded())
    assert events == [
        e.JobSucceeded(
            at=job.now,
            job_id=JOB,
            attempt=1,
            final_step=1000,
            output_path="output/training_001/v0-20250301",
        )
    ]
    state = job.state
    assert state.status is JobStatus.SUCCEEDED
    assert (state.finished_at, state.runner_id, state.gpu_ids) == (job.now, None, ())
    assert job.do(job.succeeded(runner=RUNNER)) == [], "a redelivered success is harmless"


def test_a_stopping_job_that_finishes_first_has_succeeded() -> None:
    job = in_status(JobStatus.STOPPING)
    job.do(job.succeeded())
    assert job.state.status is JobStatus.SUCCEEDED


@pytest.mark.parametrize(
    "status", [JobStatus.SCHEDULED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.HELD]
)
def test_succeeded_report_that_does_not_fit_is_refused(status: JobStatus) -> None:
    job = in_status(status)
    job.refuse(job.succeeded(runner=RUNNER), InvalidTransition, "invalid_transition")


@pytest.mark.parametrize("status", [JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.STOPPING])
def test_failed_report_fails_the_job(status: JobStatus) -> None:
    job = in_status(status)
    events = job.do(job.failed())
    assert events == [
        e.JobFailed(
            at=job.now,
            job_id=JOB,
            attempt=1,
            exit_code=1,
            reason="CUDA out of memory",
            stderr_tail="torch.OutOfMemoryError",
        )
    ]
    state = job.state
    assert state.status is JobStatus.FAILED
    assert (state.failure_reason, state.exit_code) == ("CUDA out of memory", 1)
    assert (state.runner_id, state.gpu_ids) == (None, ())
    assert job.do(job.failed(runner=RUNNER)) == [], "a redelivered failure is harmless"


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.STOPPED])
def test_failed_report_after_another_ending_is_refused(status: JobStatus) -> None:
    job = in_status(status)
    job.refuse(job.failed(runner=RUNNER), InvalidTransition, "invalid_transition")


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED])
def test_stopped_report_after_another_ending_is_refused(status: JobStatus) -> None:
    job = in_status(status)
    job.refuse(job.stopped(), InvalidTransition, "invalid_transition")


# --- lost and rejected ----------------------------------------------------------------------


def test_a_lost_job_is_requeued_from_its_last_checkpoint() -> None:
    job = running(max_retries=2)
    job.do(job.checkpoint(CKPT_100))
    events = job.do(job.lost())
    assert events == [
        e.JobLost(at=job.now, job_id=JOB, attempt=1, runner_id=RUNNER, reason="lease expired"),
        e.JobRequeued(
            at=job.now,
            job_id=JOB,
            priority=9,
            retries=1,
            reason="lost: lease expired",
            resume_from=CKPT_100,
            failure=Failure(kind="runner_lost", detail="lease expired"),
        ),
    ]
    state = job.state
    assert (state.status, state.retries, state.attempt) == (JobStatus.QUEUED, 1, 1)
    assert (state.runner_id, state.gpu_ids, state.pid) == (None, (), None)
    assert state.resume_from == CKPT_100


def test_a_lost_job_is_retried_until_max_retries_then_fails() -> None:
    job = scheduled(max_retries=2)
    for retry in (1, 2):
        (_, requeued) = job.do(job.lost())
        assert isinstance(requeued, e.JobRequeued)
        assert requeued.retries == retry
        job.schedule(runner=(RUNNER, OTHER)[retry % 2])
        job.do(job.started())
    lost, failed = job.do(job.lost())
    assert isinstance(lost, e.JobLost)
    assert failed == e.JobFailed(
        at=job.now,
        job_id=JOB,
        attempt=3,
        exit_code=None,
        reason="lost: lease expired; gave up after 2 retries",
        failure=Failure(kind="runner_lost", detail="lease expired"),
    )
    assert job.state.status is JobStatus.FAILED
    assert job.state.retries == 2


def test_with_no_retries_the_first_loss_fails_the_job() -> None:
    job = running(max_retries=0)
    job.do(job.lost())
    assert job.state.status is JobStatus.FAILED
    assert job.state.retries == 0


def test_a_job_lost_while_stopping_is_stopped() -> None:
    job = running()
    job.do(job.checkpoint(CKPT_100))
    job.do(c.StopJob(job_id=JOB, reason="enough"))
    lost, stopped = job.do(job.lost())
    assert isinstance(lost, e.JobLost)
    assert stopped == e.JobStopped(
        at=job.now, job_id=JOB, reason="enough", attempt=1, checkpoint=CKPT_100
    )
    assert job.state.status is JobStatus.STOPPED
    assert job.state.retries == 0, "a stop the user asked for costs no retry"


@pytest.mark.parametrize("status", [JobStatus.HELD, JobStatus.QUEUED, *sorted(FINISHED)])
def test_a_loss_noticed_after_the_job_moved_on_records_nothing(status: JobStatus) -> None:
    job = in_status(status)
    before = job.state
    assert job.do(job.lost()) == []
    assert job.state == before


def test_a_loss_of_an_older_attempt_records_nothing() -> None:
    job = running()
    assert job.do(job.lost(attempt=0)) == []
    assert job.do(job.lost(attempt=2)) == []
    assert job.state.status is JobStatus.RUNNING


def test_a_rejected_assignment_requeues_the_job() -> None:
    job = scheduled(max_retries=1)
    events = job.do(job.reject())
    assert events == [
        e.AssignmentRejected(
            at=job.now,
            job_id=JOB,
            attempt=1,
            runner_id=RUNNER,
            reason="GPU 0 is busy with a foreign process",
        ),
        e.JobRequeued(
            at=job.now,
            job_id=JOB,
            priority=9,
            retries=1,
            reason="rejected: GPU 0 is busy with a foreign process",
        ),
    ]
    assert (job.state.status, job.state.runner_id) == (JobStatus.QUEUED, None)
    job.schedule(runner=OTHER)
    (_, failed) = job.do(job.reject())
    assert isinstance(failed, e.JobFailed)
    assert "gave up after 1 retries" in failed.reason


@pytest.mark.parametrize("status", [JobStatus.RUNNING, JobStatus.STOPPING, JobStatus.QUEUED])
def test_only_an_unstarted_assignment_can_be_rejected(status: JobStatus) -> None:
    job = in_status(status)
    job.refuse(job.reject(attempt=job.state.attempt), InvalidTransition, "invalid_transition")


# --- export ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", sorted(FINISHED))
def test_export_of_a_finished_job_merges_its_last_checkpoint(status: JobStatus) -> None:
    job = finished(status, checkpoints=(CKPT_100, CKPT_200))
    events = job.do(c.RequestExport(job_id=JOB))
    assert events == [
        e.ExportRequested(
            at=job.now,
            job_id=JOB,
            export_id=f"{JOB}-export-1",
            checkpoint=CKPT_200,
            runner_id=RUNNER,
        )
    ]
    in_flight = job.state.export_in_flight
    assert in_flight is not None
    assert (in_flight.export_id, in_flight.status) == (f"{JOB}-export-1", "requested")


def test_export_goes_to_the_runner_that_last_ran_the_job() -> None:
    job = running(max_retries=1)
    job.do(job.lost())
    job.schedule(runner=OTHER)
    job.do(job.started())
    job.do(job.checkpoint(CKPT_100))
    job.do(job.succeeded())
    (export,) = job.do(c.RequestExport(job_id=JOB))
    assert isinstance(export, e.ExportRequested)
    assert export.runner_id == OTHER


@pytest.mark.parametrize("name", [CKPT_100, "checkpoint-100", CKPT_100 + "/"])
def test_export_of_a_named_checkpoint_by_path_or_folder_name(name: str) -> None:
    job = finished(JobStatus.SUCCEEDED, checkpoints=(CKPT_100, CKPT_200))
    if name.endswith("/"):
        message = job.refuse(
            c.RequestExport(job_id=JOB, checkpoint=name), NoCheckpoint, "no_checkpoint"
        )
        assert "checkpoint-100" in message, "the message lists the known checkpoints"
        return
    (export,) = job.do(c.RequestExport(job_id=JOB, checkpoint=name))
    assert isinstance(export, e.ExportRequested)
    assert export.checkpoint == CKPT_100


def test_export_of_an_unknown_checkpoint_lists_the_known_ones() -> None:
    job = finished(JobStatus.SUCCEEDED, checkpoints=(CKPT_100, CKPT_200))
    message = job.refuse(
        c.RequestExport(job_id=JOB, checkpoint="checkpoint-300"), NoCheckpoint, "no_checkpoint"
    )
    assert "['checkpoint-100', 'checkpoint-200']" in message


def test_export_without_any_checkpoint_is_refused() -> None:
    job = finished(JobStatus.SUCCEEDED, checkpoints=())
    message = job.refuse(c.RequestExport(job_id=JOB), NoCheckpoint, "no_checkpoint")
    assert "no checkpoint to export" in message
    assert issubclass(NoCheckpoint, InvalidTransition)


@pytest.mark.parametrize(
    "status",
    [JobStatus.HELD, JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.STOPPING],
)
def test_export_before_training_has_finished_is_refused(status: JobStatus) -> None:
    job = in_status(status)
    message = job.refuse(c.RequestExport(job_id=JOB), InvalidTransition, "invalid_transition")
    assert "once training has finished" in message


def test_export_of_a_full_fine_tune_is_refused() -> None:
    job = finished(JobStatus.SUCCEEDED, train_args=TrainArgs(train_type="full"))
    message = job.refuse(c.RequestExport(job_id=JOB), InvalidTransition, "invalid_transition")
    assert "full fine-tune has no LoRA adapter" in message


def test_export_while_another_is_in_flight_is_refused() -> None:
    job = finished(JobStatus.SUCCEEDED, checkpoints=(CKPT_100, CKPT_200))
    job.do(c.RequestExport(job_id=JOB))
    job.do(c.ReportExportStarted(job_id=JOB, export_id=f"{JOB}-export-1", runner_id=RUNNER, pid=7))
    message = job.refuse(
        c.RequestExport(job_id=JOB, checkpoint="checkpoint-100"),
        InvalidTransition,
        "invalid_transition",
    )
    assert f"export {JOB}-export-1 is still in progress" in message


def test_export_lifecycle_and_idempotent_repeat() -> None:
    job = finished(JobStatus.SUCCEEDED)
    export_id = f"{JOB}-export-1"
    job.do(c.RequestExport(job_id=JOB))

    started = c.ReportExportStarted(
        job_id=JOB, export_id=export_id, runner_id=RUNNER, pid=77, command=("swift", "export")
    )
    assert job.do(started) == [
        e.ExportStarted(
            at=job.now,
            job_id=JOB,
            export_id=export_id,
            runner_id=RUNNER,
            pid=77,
            command=("swift", "export"),
        )
    ]
    assert job.state.exports[0].status == "running"
    assert job.do(started) == [], "a redelivered start is harmless"

    done = c.ReportExportSucceeded(
        job_id=JOB, export_id=export_id, runner_id=RUNNER, artifact_path="output/merged"
    )
    assert job.do(done) == [
        e.ExportSucceeded(
            at=job.now, job_id=JOB, export_id=export_id, artifact_path="output/merged"
        )
    ]
    (export,) = job.state.exports
    assert (export.status, export.artifact_path) == ("succeeded", "output/merged")
    assert job.state.export_in_flight is None
    assert job.do(done) == [], "a redelivered success is harmless"

    # Exporting the same checkpoint again is a no-op unless overwrite is asked for.
    assert job.do(c.RequestExport(job_id=JOB)) == []
    assert job.do(c.RequestExport(job_id=JOB, checkpoint="checkpoint-100")) == []
    (again,) = job.do(c.RequestExport(job_id=JOB, overwrite=True))
    assert again == e.ExportRequested(
        at=job.now,
        job_id=JOB,
        export_id=f"{JOB}-export-2",
        checkpoint=CKPT_100,
        runner_id=RUNNER,
        overwrite=True,
    )


def test_a_failed_export_can_be_requested_again() -> None:
    job = finished(JobStatus.STOPPED)
    job.do(c.RequestExport(job_id=JOB))
    failed = c.ReportExportFailed(
        job_id=JOB, export_id=f"{JOB}-export-1", runner_id=RUNNER, exit_code=2, reason="disk full"
    )
    assert job.do(failed) == [
        e.ExportFailed(
            at=job.now,
            job_id=JOB,
            export_id=f"{JOB}-export-1",
            exit_code=2,
            reason="disk full",
        )
    ]
    assert (job.state.exports[0].status, job.state.exports[0].reason) == ("failed", "disk full")
    assert job.do(failed) == [], "a redelivered failure is harmless"
    (retry,) = job.do(c.RequestExport(job_id=JOB))
    assert isinstance(retry, e.ExportRequested)
    assert retry.export_id == f"{JOB}-export-2"


def test_export_reports_that_do_not_fit_are_refused() -> None:
    job = finished(JobStatus.SUCCEEDED)
    job.refuse(
        c.ReportExportStarted(job_id=JOB, export_id="nope", runner_id=RUNNER, pid=1),
        InvalidTransition,
        "invalid_transition",
    )
    export_id = f"{JOB}-export-1"
    job.do(c.RequestExport(job_id=JOB))
    job.do(
        c.ReportExportSucceeded(
            job_id=JOB, export_id=export_id, runner_id=RUNNER, artifact_path="a"
        )
    )
    for late in (
        c.ReportExportStarted(job_id=JOB, export_id=export_id, runner_id=RUNNER, pid=1),
        c.ReportExportFailed(
            job_id=JOB, export_id=export_id, runner_id=RUNNER, exit_code=1, reason="x"
        ),
    ):
        message = job.refuse(late, InvalidTransition, "invalid_transition")
        assert f"export {export_id} is succeeded" in message


def test_a_failed_report_ends_a_running_export() -> None:
    job = finished(JobStatus.SUCCEEDED)
    export_id = f"{JOB}-export-1"
    job.do(c.RequestExport(job_id=JOB))
    job.do(c.ReportExportStarted(job_id=JOB, export_id=export_id, runner_id=RUNNER, pid=7))
    failed = c.ReportExportFailed(
        job_id=JOB, export_id=export_id, runner_id=RUNNER, exit_code=1, reason="disk full"
    )
    assert job.do(failed) == [
        e.ExportFailed(at=job.now, job_id=JOB, export_id=export_id, exit_code=1, reason="disk full")
    ]


def test_a_checkpoint_reported_with_a_trailing_slash_is_exported_by_its_folder_name() -> None:
    job = finished(JobStatus.SUCCEEDED, checkpoints=(CKPT_100 + "/", CKPT_200))
    (export,) = job.do(c.RequestExport(job_id=JOB, checkpoint="checkpoint-100"))
    assert isinstance(export, e.ExportRequested)
    assert export.checkpoint == CKPT_100 + "/"


# --- every refusal, word for word -------------------------------------------------------------


def _export_in_flight() -> Job:
    job = finished(JobStatus.SUCCEEDED)
    job.do(c.RequestExport(job_id=JOB))
    return job


def _export_done() -> Job:
    job = _export_in_flight()
    job.do(
        c.ReportExportSucceeded(
            job_id=JOB, export_id=f"{JOB}-export-1", runner_id=RUNNER, artifact_path="a"
        )
    )
    return job


def _preempt(attempt: int = 1) -> c.PreemptJob:
    return c.PreemptJob(job_id=JOB, attempt=attempt, preempted_by="urgent", reason="r", grace_s=60)


REFUSALS: list[tuple[str, Any, Any, str]] = [
    (
        "start a finished job",
        lambda: in_status(JobStatus.SUCCEEDED),
        lambda job: c.StartJob(job_id=JOB),
        "start job 'training_001' while it is succeeded: "
        "it has finished; submit a new job to train again",
    ),
    (
        "start a cancelled job",
        lambda: in_status(JobStatus.CANCELLED),
        lambda job: c.StartJob(job_id=JOB),
        "start job 'training_001' while it is cancelled: "
        "a cancelled job is final; submit a new job",
    ),
    (
        "start a stopping job",
        lambda: in_status(JobStatus.STOPPING),
        lambda job: c.StartJob(job_id=JOB),
        "start job 'training_001' while it is stopping: "
        "wait until it has stopped, then start it again",
    ),
    (
        "stop a finished job",
        lambda: in_status(JobStatus.SUCCEEDED),
        lambda job: c.StopJob(job_id=JOB),
        "stop job 'training_001' while it is succeeded: it is no longer running",
    ),
    (
        "pause a stopping job",
        lambda: in_status(JobStatus.STOPPING),
        lambda job: c.PauseJob(job_id=JOB),
        "pause job 'training_001' while it is stopping: a stop is already in progress",
    ),
    (
        "pause a finished job",
        lambda: in_status(JobStatus.SUCCEEDED),
        lambda job: c.PauseJob(job_id=JOB),
        "pause job 'training_001' while it is succeeded: only queued or running jobs can be paused",
    ),
    (
        "cancel a finished job",
        lambda: in_status(JobStatus.SUCCEEDED),
        lambda job: c.CancelJob(job_id=JOB),
        "cancel job 'training_001' while it is succeeded: it has already finished",
    ),
    (
        "requeue a finished job",
        lambda: in_status(JobStatus.SUCCEEDED),
        lambda job: c.RequeueJob(job_id=JOB, reason="r"),
        "requeue job 'training_001' while it is succeeded: it is not running",
    ),
    (
        "resume a running job",
        lambda: in_status(JobStatus.RUNNING),
        lambda job: c.ResumeJob(job_id=JOB),
        "resume job 'training_001' while it is running: "
        "only paused, stopped or timed-out jobs can be resumed",
    ),
    (
        "time out a queued job",
        lambda: in_status(JobStatus.QUEUED),
        lambda job: c.TimeOutJob(job_id=JOB, attempt=0, reason="r"),
        "time out job 'training_001' while it is queued: it is not running",
    ),
    (
        "delete a running job",
        lambda: in_status(JobStatus.RUNNING),
        lambda job: c.DeleteJob(job_id=JOB),
        "delete job 'training_001' while it is running: "
        "stop it first and delete it once it has stopped",
    ),
    (
        "reorder a running job",
        lambda: in_status(JobStatus.RUNNING),
        lambda job: c.ChangePriority(job_id=JOB, priority=1),
        "change the priority of job 'training_001' while it is running: "
        "only held, waiting or queued jobs can be reordered",
    ),
    (
        "schedule a running job",
        lambda: in_status(JobStatus.RUNNING),
        lambda job: job.schedule_cmd(),
        "schedule job 'training_001' while it is running: only queued jobs can be placed",
    ),
    (
        "reject a started job",
        lambda: in_status(JobStatus.RUNNING),
        lambda job: job.reject(),
        "reject the assignment of job 'training_001' while it is running: "
        "only a job that has not started can be",
    ),
    (
        "preempt a queued job",
        lambda: in_status(JobStatus.QUEUED),
        lambda job: _preempt(),
        "preempt job 'training_001' while it is queued: only its running attempt 0 can be",
    ),
    (
        "preempt a job a user is stopping",
        lambda: in_status(JobStatus.STOPPING),
        lambda job: _preempt(),
        "preempt job 'training_001' while it is stopping: only its running attempt 1 can be",
    ),
    (
        "preempt a job that is not preemptible",
        lambda: running(preemptible=False),
        lambda job: _preempt(),
        "preempt job 'training_001' while it is running: its spec says preemptible: false",
    ),
    (
        "progress before the start",
        lambda: in_status(JobStatus.SCHEDULED),
        lambda job: job.progress(attempt=1),
        "record ReportProgress for job 'training_001' while it is scheduled: "
        "the report does not fit",
    ),
    (
        "schedule on the same GPU twice",
        lambda: in_status(JobStatus.QUEUED),
        lambda job: job.schedule_cmd(gpus=(0, 0)),
        "schedule job 'training_001' while it is queued: it needs 1 distinct GPUs, got [0, 0]",
    ),
    (
        "export a running job",
        lambda: in_status(JobStatus.RUNNING),
        lambda job: c.RequestExport(job_id=JOB),
        "export job 'training_001' while it is running: "
        "export once training has finished or been stopped",
    ),
    (
        "export a full fine-tune",
        lambda: finished(JobStatus.SUCCEEDED, train_args=TrainArgs(train_type="full")),
        lambda job: c.RequestExport(job_id=JOB),
        "export job 'training_001' while it is succeeded: "
        "a full fine-tune has no LoRA adapter to merge",
    ),
    (
        "export while an export runs",
        _export_in_flight,
        lambda job: c.RequestExport(job_id=JOB, overwrite=True),
        "export job 'training_001' while it is succeeded: "
        "export training_001-export-1 is still in progress",
    ),
    (
        "report on an unknown export",
        _export_in_flight,
        lambda job: c.ReportExportStarted(job_id=JOB, export_id="x", runner_id=RUNNER, pid=1),
        "record export progress for job 'training_001' while it is succeeded: no export 'x'",
    ),
    (
        "report a start of a finished export",
        _export_done,
        lambda job: c.ReportExportStarted(
            job_id=JOB, export_id=f"{JOB}-export-1", runner_id=RUNNER, pid=1
        ),
        "record export progress for job 'training_001' while it is succeeded: "
        "export training_001-export-1 is succeeded",
    ),
]


@pytest.mark.parametrize(
    ("setup", "command", "message"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_a_refusal_says_what_was_refused_for_which_job_in_which_status_and_why(
    setup: Any, command: Any, message: str
) -> None:
    job = setup()
    assert job.refuse(command(job), InvalidTransition, "invalid_transition") == f"cannot {message}"


# --- delete ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", sorted(ACTIVE))
def test_delete_of_an_active_job_is_refused(status: JobStatus) -> None:
    job = in_status(status)
    message = job.refuse(c.DeleteJob(job_id=JOB), InvalidTransition, "invalid_transition")
    assert "stop it first" in message


@pytest.mark.parametrize("status", [JobStatus.HELD, JobStatus.QUEUED, *sorted(FINISHED)])
def test_a_deleted_job_is_gone_and_its_id_can_be_used_again(status: JobStatus) -> None:
    job = in_status(status)
    version = job.state.version
    assert job.do(c.DeleteJob(job_id=JOB)) == [e.JobDeleted(at=job.now, job_id=JOB)]
    assert job.state == JobState(job_id=JOB, status=JobStatus.DELETED, version=version + 1)
    assert not job.state.exists
    job.refuse(c.DeleteJob(job_id=JOB), JobNotFound, "job_not_found")

    job.do(c.SubmitJob(job_id=JOB, spec=spec(priority=1, auto_start=False)))
    state = job.state
    assert (state.status, state.priority, state.attempt, state.retries) == (
        JobStatus.HELD,
        1,
        0,
        0,
    )
    assert (state.checkpoints, state.exports, state.last_runner_id) == ((), (), None)
    assert state.version == version + 3, "the stream's version keeps counting"


# --- evolve ---------------------------------------------------------------------------------


def test_evolve_counts_every_event_and_leaves_the_old_state_alone() -> None:
    job = running()
    before = job.state
    snapshot = msgspec.json.encode(before)
    after = evolve(before, e.JobProgressed(at=T0, job_id=JOB, attempt=1, step=5))
    assert after.version == before.version + 1
    assert msgspec.json.encode(before) == snapshot


def test_replay_of_nothing_is_the_initial_state() -> None:
    assert replay(JOB, []) == initial_state(JOB) == JobState(job_id=JOB)
    assert not initial_state(JOB).exists


# --- pause, resume, cancel ------------------------------------------------------------------


@pytest.mark.parametrize("status", [JobStatus.HELD, JobStatus.QUEUED])
def test_pause_of_a_waiting_job_pauses_it_at_once(status: JobStatus) -> None:
    job = in_status(status)
    events = job.do(c.PauseJob(job_id=JOB, reason="later"))
    assert events == [e.JobPaused(at=job.now, job_id=JOB, reason="later", attempt=0)]
    assert job.state.status is JobStatus.PAUSED


def test_pause_of_a_running_job_stops_it_with_a_checkpoint_and_resume_continues_from_it() -> None:
    job = running()
    job.do(job.checkpoint(CKPT_100))
    (request,) = job.do(c.PauseJob(job_id=JOB))
    assert request == e.StopRequested(
        at=job.now,
        job_id=JOB,
        reason="paused by user",
        runner_id=RUNNER,
        attempt=1,
        intent="pause",
    )
    assert job.state.status is JobStatus.STOPPING
    assert job.do(c.PauseJob(job_id=JOB)) == [], "a second pause is already so"
    (paused,) = job.do(job.stopped(checkpoint=CKPT_200))
    assert paused == e.JobPaused(
        at=job.now, job_id=JOB, reason="paused by user", attempt=1, checkpoint=CKPT_200
    )
    assert (job.state.status, job.state.runner_id, job.state.gpu_ids) == (
        JobStatus.PAUSED,
        None,
        (),
    )
    job.do(job.checkpoint(CKPT_200, step=200))  # the runner reports the save afterwards
    (queued,) = job.do(c.ResumeJob(job_id=JOB))
    assert isinstance(queued, e.JobQueued)
    assert (queued.reason, queued.resume_from) == ("resumed", CKPT_200)
    assert job.state.status is JobStatus.QUEUED
    job.schedule()
    assert job.history[-1] == e.JobScheduled(
        at=job.now,
        job_id=JOB,
        attempt=2,
        runner_id=RUNNER,
        gpu_ids=(0,),
        gpu_uuids=("GPU-0",),
        resume_from=CKPT_200,
    )


def test_a_paused_job_can_also_be_started_natively() -> None:
    job = finished(JobStatus.PAUSED)
    (queued,) = job.do(c.StartJob(job_id=JOB))
    assert isinstance(queued, e.JobQueued)
    assert queued.resume_from == CKPT_100


@pytest.mark.parametrize(
    "status",
    [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED, JobStatus.SUCCEEDED],
)
def test_resume_of_a_job_that_is_not_paused_is_refused(status: JobStatus) -> None:
    job = in_status(status)
    message = job.refuse(c.ResumeJob(job_id=JOB), InvalidTransition, "invalid_transition")
    assert "only paused, stopped or timed-out jobs" in message


def test_resume_of_a_stopped_job_queues_it_like_start() -> None:
    job = finished(JobStatus.STOPPED)
    (queued,) = job.do(c.ResumeJob(job_id=JOB))
    assert isinstance(queued, e.JobQueued)
    assert queued.resume_from == CKPT_100


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_pause_of_a_finished_job_is_refused(status: JobStatus) -> None:
    job = in_status(status)
    job.refuse(c.PauseJob(job_id=JOB), InvalidTransition, "invalid_transition")


def test_pause_while_a_stop_is_under_way_is_refused() -> None:
    job = in_status(JobStatus.STOPPING)
    message = job.refuse(c.PauseJob(job_id=JOB), InvalidTransition, "invalid_transition")
    assert "stop is already in progress" in message


@pytest.mark.parametrize(
    "status", [JobStatus.HELD, JobStatus.QUEUED, JobStatus.PAUSED, JobStatus.STOPPED]
)
def test_cancel_of_a_resting_job_is_final_at_once(status: JobStatus) -> None:
    job = in_status(status)
    (cancelled,) = job.do(c.CancelJob(job_id=JOB, reason="wrong model"))
    assert isinstance(cancelled, e.JobCancelled)
    assert cancelled.reason == "wrong model"
    assert job.state.status is JobStatus.CANCELLED
    assert job.do(c.CancelJob(job_id=JOB)) == [], "a second cancel is already so"
    for command in (c.StartJob(job_id=JOB), c.ResumeJob(job_id=JOB), c.PauseJob(job_id=JOB)):
        job.refuse(command, InvalidTransition, "invalid_transition")


def test_cancel_of_a_running_job_asks_its_runner_and_ends_cancelled() -> None:
    job = running()
    (request,) = job.do(c.CancelJob(job_id=JOB))
    assert isinstance(request, e.StopRequested)
    assert request.intent == "cancel"
    (cancelled,) = job.do(job.stopped(checkpoint=CKPT_100))
    assert cancelled == e.JobCancelled(
        at=job.now, job_id=JOB, reason="cancelled by user", attempt=1, checkpoint=CKPT_100
    )
    assert job.state.status is JobStatus.CANCELLED
    assert job.do(job.stopped()) == [], "a redelivered stop report changes nothing"


def test_cancel_during_a_pause_turns_the_pause_into_a_cancel() -> None:
    job = running()
    job.do(c.PauseJob(job_id=JOB))
    (request,) = job.do(c.CancelJob(job_id=JOB))
    assert isinstance(request, e.StopRequested)
    assert request.intent == "cancel"
    job.do(job.stopped())
    assert job.state.status is JobStatus.CANCELLED


def test_a_cancelled_job_whose_process_fails_on_the_way_out_is_still_cancelled() -> None:
    job = running()
    job.do(c.CancelJob(job_id=JOB))
    events = job.do(job.failed())
    assert [type(x) for x in events] == [e.JobFailed, e.JobCancelled]
    assert job.state.status is JobStatus.CANCELLED


def test_a_lost_runner_ends_a_pause_as_paused() -> None:
    job = running()
    job.do(job.checkpoint(CKPT_100))
    job.do(c.PauseJob(job_id=JOB))
    events = job.do(job.lost())
    assert [type(x) for x in events] == [e.JobLost, e.JobPaused]
    assert job.state.status is JobStatus.PAUSED


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED])
def test_cancel_of_a_finished_job_is_refused(status: JobStatus) -> None:
    job = in_status(status)
    message = job.refuse(c.CancelJob(job_id=JOB), InvalidTransition, "invalid_transition")
    assert "already finished" in message


# --- automatic export -----------------------------------------------------------------------


def test_success_requests_the_export_of_the_final_checkpoint_when_the_spec_asks() -> None:
    job = running(auto_export=True)
    job.do(job.checkpoint(CKPT_100))
    final = c.ReportSucceeded(
        job_id=JOB, attempt=1, runner_id=RUNNER, final_step=200, output_path=CKPT_200
    )
    events = job.do(final)
    assert [type(x) for x in events] == [e.JobSucceeded, e.CheckpointSaved, e.ExportRequested]
    assert [cp.path for cp in job.state.checkpoints] == [CKPT_100, CKPT_200]
    export = events[2]
    assert isinstance(export, e.ExportRequested)
    assert (export.checkpoint, export.runner_id, export.export_id) == (
        CKPT_200,
        RUNNER,
        f"{JOB}-export-1",
    )
    assert job.state.export_in_flight is not None


@pytest.mark.parametrize(
    ("output_path", "step"),
    [(CKPT_200 + "/", 200), ("output/training_001/v0-20250301/checkpoint-final", 0)],
)
def test_auto_export_records_the_final_checkpoint_named_by_the_runner(
    output_path: str, step: int
) -> None:
    job = running(auto_export=True)
    final = c.ReportSucceeded(
        job_id=JOB, attempt=1, runner_id=RUNNER, final_step=200, output_path=output_path
    )
    _, saved, export = job.do(final)
    assert saved == e.CheckpointSaved(
        at=job.now, job_id=JOB, attempt=1, step=step, path=output_path
    )
    assert isinstance(export, e.ExportRequested) and export.checkpoint == output_path


def test_auto_export_without_an_output_path_takes_the_last_checkpoint() -> None:
    job = running(auto_export=True)
    job.do(job.checkpoint(CKPT_100))
    _, export = job.do(msgspec.structs.replace(job.succeeded(), output_path=None))
    assert isinstance(export, e.ExportRequested) and export.checkpoint == CKPT_100


def test_auto_export_falls_back_to_the_last_recorded_checkpoint() -> None:
    job = running(auto_export=True)
    job.do(job.checkpoint(CKPT_100))
    events = job.do(job.succeeded())  # output_path names the run folder, not a checkpoint
    export = events[-1]
    assert isinstance(export, e.ExportRequested)
    assert export.checkpoint == CKPT_100


@pytest.mark.parametrize(
    ("overrides", "checkpoints"),
    [
        ({}, (CKPT_100,)),
        ({"auto_export": True, "train_args": TrainArgs(train_type="full")}, (CKPT_100,)),
        ({"auto_export": True}, ()),
    ],
)
def test_no_auto_export_without_the_flag_a_lora_adapter_or_a_checkpoint(
    overrides: dict[str, Any], checkpoints: tuple[str, ...]
) -> None:
    job = running(**overrides)
    for path in checkpoints:
        job.do(job.checkpoint(path))
    events = job.do(job.succeeded())
    assert [type(x) for x in events] == [e.JobSucceeded]


@pytest.mark.parametrize("ending", ["succeeded", "failed"])
def test_a_pause_overtaken_by_the_end_of_training_leaves_no_intent_behind(ending: str) -> None:
    job = running()
    job.do(c.PauseJob(job_id=JOB))
    job.do(job.succeeded() if ending == "succeeded" else job.failed())
    assert job.state.stop_intent == "stop"
    if ending == "failed":
        job.do(c.StartJob(job_id=JOB))
        job.schedule()
        job.do(job.started())
        job.do(c.StopJob(job_id=JOB))
        (stopped,) = job.do(job.stopped())
        assert isinstance(stopped, e.JobStopped), "a later plain stop is not a pause"
