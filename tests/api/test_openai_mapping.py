"""The pure mapping between native jobs and the OpenAI shapes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from swift_trainer.api.openai.mapping import job_object, openai_status, spec_for_request
from swift_trainer.api.openai.openai_errors import OpenAIProblem
from swift_trainer.api.openai.schemas import CreateFineTuningJob
from swift_trainer.core.failure import Failure
from swift_trainer.core.job import Export, JobStatus
from swift_trainer.core.spec import TrainArgs
from swift_trainer.projections.read_models.views import JobSummary, ProgressView

AT = datetime(2026, 1, 1, tzinfo=UTC)


def summary(**fields: Any) -> JobSummary:
    base: dict[str, Any] = {
        "job_id": "ftjob-1",
        "status": JobStatus.QUEUED,
        "priority": 5,
        "version": 1,
        "submitted_position": 1,
        "updated_position": 1,
        "data_path": "",
        "model_path": "m",
        "output_dir": "output/ftjob-1",
        "gpu_count": 1,
        "labels": {},
        "train_args": TrainArgs(),
        "auto_start": True,
        "max_retries": 2,
        "gpu_name": None,
        "min_gpu_memory_gb": None,
        "attempt": 0,
        "retries": 0,
        "runner_id": None,
        "last_runner_id": None,
        "gpu_ids": (),
        "pid": None,
        "resume_from": None,
        "submitted_at": AT,
        "started_at": None,
        "finished_at": None,
        "updated_at": None,
        "progress": None,
        "last_checkpoint": None,
        "checkpoints": (),
        "exports": (),
        "failure_reason": None,
        "exit_code": None,
        "stop_reason": None,
        "training_file": "file-abc",
    }
    return JobSummary(**{**base, **fields})


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        (JobStatus.HELD, "queued"),
        (JobStatus.QUEUED, "queued"),
        (JobStatus.SCHEDULED, "queued"),
        (JobStatus.RUNNING, "running"),
        (JobStatus.STOPPING, "running"),
        (JobStatus.SUCCEEDED, "succeeded"),
        (JobStatus.FAILED, "failed"),
        (JobStatus.STOPPED, "paused"),
        (JobStatus.PAUSED, "paused"),
        (JobStatus.CANCELLED, "cancelled"),
    ],
)
def test_every_native_status_has_an_openai_one(status: JobStatus, shown: str) -> None:
    assert openai_status(summary(status=status)) == shown


def test_a_succeeded_job_is_running_until_its_automatic_export_has_merged() -> None:
    merging = Export(export_id="x-1", checkpoint="c", runner_id="r", status="running")
    done = Export(
        export_id="x-1",
        checkpoint="c",
        runner_id="r",
        status="succeeded",
        artifact_path="/out/c-merged",
    )
    assert (
        openai_status(summary(status=JobStatus.SUCCEEDED, auto_export=True, exports=(merging,)))
        == "running"
    )
    job = job_object(
        summary(status=JobStatus.SUCCEEDED, auto_export=True, exports=(done,), finished_at=AT), []
    )
    assert (job.status, job.fine_tuned_model, job.finished_at) == (
        "succeeded",
        "/out/c-merged",
        int(AT.timestamp()),
    )


def test_failed_jobs_carry_an_error_and_running_ones_an_estimated_finish() -> None:
    failed = job_object(summary(status=JobStatus.FAILED, failure_reason="OOM", exit_code=1), [])
    assert failed.error is not None
    assert (failed.error.code, failed.error.message) == ("exit_code_1", "OOM")
    progress = ProgressView(step=5, max_steps=10, remaining_s=60.0, at=AT)
    running = job_object(summary(status=JobStatus.RUNNING, progress=progress), [])
    assert running.error is None
    assert running.estimated_finish == int(AT.timestamp()) + 60


def test_hyperparameters_map_to_train_args_and_back() -> None:
    body = msgspec.convert(
        {
            "model": "m",
            "training_file": "file-abc",
            "method": {
                "type": "dpo",
                "dpo": {
                    "hyperparameters": {
                        "beta": 0.3,
                        "n_epochs": 3,
                        "batch_size": "auto",
                        "learning_rate_multiplier": 0.5,
                    }
                },
            },
        },
        CreateFineTuningJob,
    )
    spec = spec_for_request(body, "ftjob-1", seed=9, auto_export=True)
    assert (spec.method, spec.dpo_beta, spec.auto_export) == ("dpo", 0.3, True)
    assert spec.train_args == TrainArgs(num_epochs=3, learning_rate=5e-5, seed=9)
    job = job_object(summary(method="dpo", dpo_beta=0.3, train_args=spec.train_args), [])
    assert job.hyperparameters.n_epochs == 3
    assert job.hyperparameters.learning_rate_multiplier == pytest.approx(0.5)
    assert job.hyperparameters.batch_size == "auto"
    assert job.seed == 9
    assert job.method.dpo is not None and job.method.dpo.hyperparameters.beta == 0.3


def test_unsupported_integrations_are_refused() -> None:
    body = CreateFineTuningJob(model="m", training_file="file-abc", integrations=[{"type": "x"}])
    with pytest.raises(OpenAIProblem) as info:
        spec_for_request(body, "ftjob-1", seed=1, auto_export=False)
    assert info.value.param == "integrations"


def test_a_wandb_integration_becomes_report_to_and_tracking() -> None:
    wandb = {"project": "vision", "entity": "team-a", "name": "run-7", "tags": ["lr"]}
    body = CreateFineTuningJob(
        model="m", training_file="file-abc", integrations=[{"type": "wandb", "wandb": wandb}]
    )
    spec = spec_for_request(body, "ftjob-1", seed=1, auto_export=False)
    assert spec.train_args.report_to == ("tensorboard", "wandb")
    assert spec.tracking is not None
    assert (spec.tracking.project, spec.tracking.entity, spec.tracking.name) == (
        "vision",
        "team-a",
        "run-7",
    )
    assert spec.tracking.tags == ("lr",)
    job = job_object(summary(train_args=spec.train_args, tracking=spec.tracking), [])
    assert msgspec.json.decode(msgspec.json.encode(job.integrations)) == [
        {"type": "wandb", "wandb": wandb}
    ]
    plain = job_object(summary(), [])
    assert plain.integrations is None
    bad = CreateFineTuningJob(
        model="m",
        training_file="file-abc",
        integrations=[{"type": "wandb", "wandb": {"api_key": "k"}}],
    )
    with pytest.raises(OpenAIProblem):
        spec_for_request(bad, "ftjob-1", seed=1, auto_export=False)


def test_a_classified_failure_gives_its_kind_as_the_code_and_its_line() -> None:
    failure = Failure(kind="data_error", detail="missing", log_line="ValueError: no dataset")
    failed = job_object(
        summary(status=JobStatus.FAILED, failure_reason="swift failed", failure=failure), []
    )
    assert failed.error is not None
    assert failed.error.code == "data_error"
    assert failed.error.message == "swift failed: ValueError: no dataset"
