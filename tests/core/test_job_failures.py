"""Retries by cause in the job aggregate: each kind of failure meets its rule."""

from __future__ import annotations

import msgspec
import pytest

from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.errors import CheckpointMissing
from swift_trainer.core.failure import FAILURE_KINDS, Failure, RetryPolicy
from swift_trainer.core.job import AttemptFailure, JobStatus, replay
from swift_trainer.core.retry import GiveUp, Retry, RetryCounts, plan_retry
from swift_trainer.core.spec import TrainArgs

from .test_job import JOB, RUNNER, Job, running

GPU_A = "GPU-aaaa"
GPU_B = "GPU-bbbb"


def fail(job: Job, failure: Failure | None) -> list[e.AnyJobEvent]:
    return job.do(
        c.ReportFailed(
            job_id=JOB,
            attempt=job.state.attempt,
            runner_id=job.state.runner_id or RUNNER,
            exit_code=1,
            reason="swift failed at step 3 of 10: it exited with code 1",
            stderr_tail="...",
            failure=failure,
        )
    )


def place(job: Job, uuid: str = GPU_A) -> None:
    attempt = job.state.attempt + 1
    job.do(
        c.ScheduleJob(
            job_id=JOB, attempt=attempt, runner_id=RUNNER, gpu_ids=(0,), gpu_uuids=(uuid,)
        )
    )
    job.do(
        c.ReportStarted(job_id=JOB, attempt=attempt, runner_id=RUNNER, pid=1, command=("swift",))
    )


OOM = Failure(kind="oom", detail="CUDA out of memory", log_line="torch.OutOfMemoryError: ...")


@pytest.mark.parametrize("kind", ["user_error", "data_error"])
def test_a_user_or_data_error_fails_at_once_with_its_line(kind: str) -> None:
    job = running()
    failure = Failure(kind=kind, detail="no dataset", log_line="FileNotFoundError: x.jsonl")
    (failed,) = fail(job, failure)
    assert isinstance(failed, e.JobFailed)
    assert failed.failure == failure
    assert "not retried" in failed.reason
    assert job.state.status is JobStatus.FAILED
    assert job.state.failure == failure
    assert job.state.failures[-1] == AttemptFailure(attempt=1, failure=failure)


def test_an_oom_is_retried_with_half_the_batch_and_twice_the_accumulation() -> None:
    job = running(train_args=TrainArgs(batch_size=8, gradient_accumulation_steps=2))
    (requeued,) = fail(job, OOM)
    assert isinstance(requeued, e.JobRequeued)
    assert requeued.train_args == TrainArgs(batch_size=4, gradient_accumulation_steps=4)
    assert "batch_size 8 -> 4" in requeued.reason
    assert "gradient_accumulation_steps 2 -> 4" in requeued.reason
    assert requeued.failure == OOM
    assert job.state.status is JobStatus.QUEUED
    place(job)
    scheduled = next(x for x in job.history if isinstance(x, e.JobScheduled) and x.attempt == 2)
    assert scheduled.train_args == TrainArgs(batch_size=4, gradient_accumulation_steps=4)


def test_a_retry_resumes_from_the_last_checkpoint_with_the_retry_count_unchanged() -> None:
    job = running(train_args=TrainArgs(batch_size=8), priority=4)
    saved(job, CKPT_A, 100)
    saved(job, CKPT_B, 200)
    (requeued,) = fail(job, OOM)
    assert requeued == e.JobRequeued(
        at=job.now,
        job_id=JOB,
        priority=4,
        retries=0,
        reason="out of GPU memory: retry 1 of 2 with batch_size 8 -> 4, "
        "gradient_accumulation_steps 4 -> 8",
        resume_from=CKPT_B,
        failure=OOM,
        train_args=TrainArgs(batch_size=4, gradient_accumulation_steps=8),
    )
    assert job.state.failures == (AttemptFailure(attempt=1, failure=OOM),)


def test_an_oom_is_retried_at_most_twice_then_fails_saying_so() -> None:
    job = running(train_args=TrainArgs(batch_size=8))
    for _ in range(2):
        (requeued,) = fail(job, OOM)
        assert isinstance(requeued, e.JobRequeued)
        place(job)
    (failed,) = fail(job, OOM)
    assert isinstance(failed, e.JobFailed)
    assert "after 2 retries with a smaller batch" in failed.reason
    assert job.state.attempt_args == TrainArgs(batch_size=2, gradient_accumulation_steps=16)


def test_on_oom_fail_does_not_retry() -> None:
    job = running(train_args=TrainArgs(batch_size=8), retry=RetryPolicy(on_oom="fail"))
    (failed,) = fail(job, OOM)
    assert isinstance(failed, e.JobFailed)
    assert "on_oom: fail" in failed.reason


def test_an_oom_at_batch_size_one_fails() -> None:
    job = running()
    (failed,) = fail(job, OOM)
    assert isinstance(failed, e.JobFailed)
    assert "batch_size 1" in failed.reason


def test_a_gpu_fault_is_retried_without_the_faulty_gpu() -> None:
    job = running()
    failure = Failure(kind="gpu_fault", detail="Xid 79", gpus=(GPU_A,))
    (requeued,) = fail(job, failure)
    assert isinstance(requeued, e.JobRequeued)
    assert requeued.excluded_gpus == (GPU_A,)
    assert job.state.excluded_gpus == (GPU_A,)
    assert "without GPUs GPU-aaaa" in requeued.reason


def test_a_gpu_fault_without_a_named_card_avoids_the_attempts_gpus() -> None:
    job = running()
    (requeued,) = fail(job, Failure(kind="gpu_fault"))
    assert isinstance(requeued, e.JobRequeued)
    place(job, GPU_B)
    (requeued,) = fail(job, Failure(kind="gpu_fault", detail="ECC"))
    assert isinstance(requeued, e.JobRequeued)
    assert requeued.excluded_gpus == (GPU_B,)


def test_an_nccl_error_is_retried_then_fails_after_max_gpu_retries() -> None:
    job = running(retry=RetryPolicy(max_gpu_retries=1))
    nccl = Failure(kind="nccl", detail="collective timed out")
    (requeued,) = fail(job, nccl)
    assert isinstance(requeued, e.JobRequeued)
    assert requeued.excluded_gpus == ()
    place(job)
    (failed,) = fail(job, nccl)
    assert isinstance(failed, e.JobFailed)
    assert "max_gpu_retries 1" in failed.reason


@pytest.mark.parametrize("kind", ["killed", "unknown"])
def test_killed_and_unknown_are_not_retried_blindly(kind: str) -> None:
    job = running()
    (failed,) = fail(job, Failure(kind=kind))
    assert isinstance(failed, e.JobFailed)
    assert job.state.status is JobStatus.FAILED


def test_an_unclassified_failure_fails_as_before() -> None:
    job = running()
    (failed,) = fail(job, None)
    assert isinstance(failed, e.JobFailed)
    assert failed.reason == "swift failed at step 3 of 10: it exited with code 1"


def test_a_failure_during_a_stop_is_not_retried() -> None:
    job = running(train_args=TrainArgs(batch_size=8))
    job.do(c.StopJob(job_id=JOB))
    (failed,) = fail(job, OOM)
    assert isinstance(failed, e.JobFailed)


def test_replay_rebuilds_the_retried_arguments_and_exclusions() -> None:
    job = running(train_args=TrainArgs(batch_size=8))
    fail(job, OOM)
    place(job, GPU_B)
    fail(job, Failure(kind="gpu_fault", gpus=(GPU_B,)))
    rebuilt = replay(JOB, list(job.history))
    assert rebuilt == job.state
    assert rebuilt.train_args == TrainArgs(batch_size=4, gradient_accumulation_steps=8)
    assert rebuilt.excluded_gpus == (GPU_B,)
    assert rebuilt.retry_counts == RetryCounts(oom=1, gpu=1)


def test_an_old_requeue_and_failure_still_decode() -> None:
    old = b'{"type":"JobRequeued","at":"2026-01-01T00:00:00Z","job_id":"j","priority":5,'
    old += b'"retries":1,"reason":"lost"}'
    event = e.decode_event("JobRequeued", old)
    assert isinstance(event, e.JobRequeued)
    assert (event.failure, event.train_args, event.excluded_gpus) == (None, None, ())
    failed = b'{"type":"JobFailed","at":"2026-01-01T00:00:00Z","job_id":"j","attempt":1,'
    failed += b'"exit_code":1,"reason":"x"}'
    assert e.decode_event("JobFailed", failed).failure is None  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", FAILURE_KINDS)
def test_every_kind_has_a_rule(kind: str) -> None:
    plan = plan_retry(
        Failure(kind=kind),
        RetryPolicy(),
        args=TrainArgs(batch_size=2),
        counts=RetryCounts(),
        attempt_gpus=(GPU_A,),
    )
    retried = {"oom", "nccl", "gpu_fault"}
    assert isinstance(plan, Retry) == (kind in retried)
    assert isinstance(plan, GiveUp) == (kind not in retried)


def test_halving_an_odd_batch_keeps_at_least_the_effective_batch() -> None:
    plan = plan_retry(
        Failure(kind="oom"),
        RetryPolicy(),
        args=TrainArgs(batch_size=3, gradient_accumulation_steps=2),
        counts=RetryCounts(),
        attempt_gpus=(),
    )
    assert isinstance(plan, Retry)
    assert plan.train_args is not None
    assert plan.train_args.batch_size == 1
    assert plan.train_args.gradient_accumulation_steps == 6
    assert msgspec.structs.asdict(plan.counts) == {"oom": 1, "gpu": 0}


CKPT_A = "output/training_001/checkpoint-100"
CKPT_B = "output/training_001/checkpoint-200"


def saved(job: Job, path: str, step: int) -> None:
    job.do(
        c.ReportCheckpoint(
            job_id=JOB, attempt=job.state.attempt, runner_id=RUNNER, step=step, path=path
        )
    )


def test_a_removed_checkpoint_is_no_longer_offered_nor_resumed_from() -> None:
    job = running(train_args=TrainArgs(batch_size=8))
    saved(job, CKPT_A, 100)
    saved(job, CKPT_B, 200)
    removed = job.do(
        c.ReportCheckpointsRemoved(
            job_id=JOB, attempt=1, runner_id=RUNNER, paths=(CKPT_A, "never/reported")
        )
    )
    assert removed == [
        e.CheckpointRemoved(
            at=job.now, job_id=JOB, attempt=1, path=CKPT_A, reason="no longer on disk"
        )
    ]
    assert [cp.path for cp in job.state.checkpoints] == [CKPT_B]
    assert [cp.path for cp in job.state.removed_checkpoints] == [CKPT_A]
    job.do(c.ReportCheckpointsRemoved(job_id=JOB, attempt=1, runner_id=RUNNER, paths=(CKPT_B,)))
    (requeued,) = fail(job, OOM)
    assert isinstance(requeued, e.JobRequeued)
    assert requeued.resume_from is None  # nothing left on disk to resume from


def test_an_export_of_a_removed_checkpoint_is_refused_as_missing() -> None:
    job = running()
    saved(job, CKPT_A, 100)
    saved(job, CKPT_B, 200)
    job.do(c.ReportCheckpointsRemoved(job_id=JOB, attempt=1, runner_id=RUNNER, paths=(CKPT_A,)))
    job.do(c.StopJob(job_id=JOB))
    job.do(c.ReportStopped(job_id=JOB, attempt=1, runner_id=RUNNER))
    for name in (CKPT_A, "checkpoint-100"):
        message = job.refuse(
            c.RequestExport(job_id=JOB, checkpoint=name), CheckpointMissing, "checkpoint_missing"
        )
        assert "no longer on disk" in message
    (export,) = job.do(c.RequestExport(job_id=JOB, checkpoint="checkpoint-200"))
    assert isinstance(export, e.ExportRequested)


def test_a_requeue_stops_with_a_checkpoint_then_queues_again() -> None:
    job = running()
    saved(job, CKPT_A, 100)
    (stop,) = job.do(c.RequeueJob(job_id=JOB, reason="runner r drained: reboot"))
    assert isinstance(stop, e.StopRequested)
    assert stop.intent == "requeue"
    assert job.do(c.RequeueJob(job_id=JOB, reason="again")) == []
    (requeued,) = job.do(c.ReportStopped(job_id=JOB, attempt=1, runner_id=RUNNER))
    assert isinstance(requeued, e.JobRequeued)
    assert requeued.reason == "runner r drained: reboot"
    assert requeued.resume_from == CKPT_A
    assert job.state.status is JobStatus.QUEUED
    assert job.state.stop_intent == "stop"
    assert job.state.retries == 0  # not the job's fault: no retry used


def test_a_warning_is_recorded_once_per_attempt() -> None:
    job = running()
    flag = c.FlagJob(job_id=JOB, attempt=1, warning="resume_stalled", reason="no step")
    (warned,) = job.do(flag)
    assert isinstance(warned, e.JobWarned)
    assert job.do(flag) == []
    assert job.do(msgspec.structs.replace(flag, attempt=7)) == []  # not the current attempt
    assert [w.kind for w in job.state.warnings] == ["resume_stalled"]
    (idle,) = job.do(msgspec.structs.replace(flag, warning="idle", reason="GPUs idle"))
    assert isinstance(idle, e.JobWarned), "another kind in the same attempt is recorded too"
    assert [w.kind for w in job.state.warnings] == ["resume_stalled", "idle"]


def plan(
    failure: Failure,
    policy: RetryPolicy | None = None,
    *,
    args: TrainArgs | None = None,
    counts: RetryCounts | None = None,
    attempt_gpus: tuple[str, ...] = (GPU_A, GPU_B),
) -> Retry | GiveUp:
    return plan_retry(
        failure,
        policy or RetryPolicy(),
        args=args or TrainArgs(batch_size=4),
        counts=counts or RetryCounts(),
        attempt_gpus=attempt_gpus,
    )


@pytest.mark.parametrize(
    ("failure", "reason", "excluded"),
    [
        (
            Failure(kind="gpu_fault"),
            "GPU fault: retry 2 of 3 without GPUs GPU-aaaa, GPU-bbbb",
            (GPU_A, GPU_B),
        ),
        (
            Failure(kind="gpu_fault", gpus=(GPU_B,)),
            "GPU fault: retry 2 of 3 without GPUs GPU-bbbb",
            (GPU_B,),
        ),
        (Failure(kind="nccl"), "NCCL error: retry 2 of 3 on newly chosen GPUs", ()),
        (
            Failure(kind="nccl", gpus=(GPU_A,)),
            "NCCL error: retry 2 of 3 without GPUs GPU-aaaa",
            (GPU_A,),
        ),
    ],
)
def test_a_hardware_retry_says_which_retry_and_where(
    failure: Failure, reason: str, excluded: tuple[str, ...]
) -> None:
    """The reason names the cause, the retry's number and the GPUs avoided; only the GPU
    count moves, by one."""
    retry = plan(failure, RetryPolicy(max_gpu_retries=3), counts=RetryCounts(oom=1, gpu=1))
    assert retry == Retry(reason=reason, excluded_gpus=excluded, counts=RetryCounts(oom=1, gpu=2))


@pytest.mark.parametrize(
    ("failure", "policy", "counts", "reason"),
    [
        (
            Failure(kind="gpu_fault"),
            RetryPolicy(on_gpu_fault="fail"),
            RetryCounts(),
            "gpu_fault; the retry policy says on_gpu_fault: fail",
        ),
        (
            Failure(kind="nccl"),
            RetryPolicy(max_gpu_retries=1),
            RetryCounts(gpu=1),
            "nccl after 1 retries on other GPUs (max_gpu_retries 1)",
        ),
        (
            Failure(kind="oom"),
            RetryPolicy(on_oom="fail"),
            RetryCounts(),
            "out of GPU memory; the retry policy says on_oom: fail",
        ),
        (
            Failure(kind="oom"),
            RetryPolicy(max_oom_retries=2),
            RetryCounts(oom=2),
            "out of GPU memory after 2 retries with a smaller batch (max_oom_retries 2)",
        ),
        (
            Failure(kind="killed"),
            RetryPolicy(),
            RetryCounts(),
            "killed failures are not retried automatically",
        ),
    ],
)
def test_a_give_up_says_which_rule_ended_the_retries(
    failure: Failure, policy: RetryPolicy, counts: RetryCounts, reason: str
) -> None:
    assert plan(failure, policy, counts=counts) == GiveUp(reason)


def test_an_out_of_memory_at_batch_size_one_gives_up() -> None:
    assert plan(Failure(kind="oom"), args=TrainArgs(batch_size=1)) == GiveUp(
        "out of GPU memory with batch_size 1: no smaller batch to try"
    )


def test_an_out_of_memory_retry_halves_the_batch_and_says_so() -> None:
    retry = plan(
        Failure(kind="oom"),
        args=TrainArgs(batch_size=8, gradient_accumulation_steps=2),
        counts=RetryCounts(oom=1, gpu=1),
    )
    assert retry == Retry(
        reason="out of GPU memory: retry 2 of 2 with batch_size 8 -> 4, "
        "gradient_accumulation_steps 2 -> 4",
        train_args=TrainArgs(batch_size=4, gradient_accumulation_steps=4),
        counts=RetryCounts(oom=2, gpu=1),
    )
