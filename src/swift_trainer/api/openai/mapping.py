"""From the native job (read model) to the OpenAI shapes, and from a create request to a spec.

Pure functions: the same job read through ``/api/v1/training`` and ``/v1/fine_tuning`` is
one job, and these are the only place the two vocabularies meet.

Statuses: ``held``/``queued``/``scheduled`` are ``queued``; ``running`` and ``stopping``
are ``running``; a succeeded job whose automatic export is still merging stays ``running``
(so ``fine_tuned_model`` is set once the client sees ``succeeded``); a native ``stopped``
job is resumable, so it shows as ``paused``.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Final, Literal

import msgspec

from ...core.job import JobStatus
from ...core.spec import EffectiveTrainArgs, JobSpec, TrainArgs, decode_spec
from ...projections.read_models.views import EventLogEntry, JobSummary, MetricPoint
from .openai_errors import OpenAIProblem
from .schemas import (
    CheckpointMetrics,
    CreateFineTuningJob,
    DpoHyperparametersOut,
    DpoOut,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    FineTuningStatus,
    Hyperparameters,
    HyperparametersOut,
    JobError,
    MethodOut,
    SupervisedOut,
)

#: Every job's ``organization_id``: there is one organisation.
ORGANIZATION_ID: Final = "org-local"
#: ms-swift's default seed, reported for native jobs that did not set one.
DEFAULT_SEED: Final = 42
_DEFAULTS: Final = EffectiveTrainArgs()

_STATUS: Final[dict[JobStatus, FineTuningStatus]] = {
    JobStatus.HELD: "queued",
    JobStatus.WAITING: "queued",
    JobStatus.QUEUED: "queued",
    JobStatus.SCHEDULED: "queued",
    JobStatus.RUNNING: "running",
    JobStatus.STOPPING: "running",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "paused",
    JobStatus.PAUSED: "paused",
    JobStatus.CANCELLED: "cancelled",
    JobStatus.TIMED_OUT: "failed",
}
_FINAL: Final = frozenset({"succeeded", "failed", "cancelled"})


def unix(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def openai_status(summary: JobSummary) -> FineTuningStatus:
    status = _STATUS.get(summary.status, "queued")
    merging = any(x.status in ("requested", "running") for x in summary.exports)
    if status == "succeeded" and summary.auto_export and merging:
        return "running"
    return status


def fine_tuned_model(summary: JobSummary) -> str | None:
    done = [x for x in summary.exports if x.status == "succeeded" and x.artifact_path]
    return done[-1].artifact_path if done else None


def _epochs(value: float | None) -> Any:
    return "auto" if value is None else max(1, round(value))


def hyperparameters_of(args: TrainArgs) -> HyperparametersOut:
    multiplier: Any = "auto"
    if args.learning_rate is not None:
        multiplier = round(args.learning_rate / _DEFAULTS.learning_rate, 12)  # no 2.0000000004
    return HyperparametersOut(
        batch_size=args.batch_size if args.batch_size is not None else "auto",
        learning_rate_multiplier=multiplier,
        n_epochs=_epochs(args.num_epochs),
    )


def method_of(summary: JobSummary, hyper: HyperparametersOut) -> MethodOut:
    if summary.method == "dpo":
        dpo = DpoHyperparametersOut(
            batch_size=hyper.batch_size,
            learning_rate_multiplier=hyper.learning_rate_multiplier,
            n_epochs=hyper.n_epochs,
            beta=summary.dpo_beta if summary.dpo_beta is not None else "auto",
        )
        return MethodOut(type="dpo", dpo=DpoOut(hyperparameters=dpo))
    return MethodOut(type="supervised", supervised=SupervisedOut(hyperparameters=hyper))


def estimated_finish(summary: JobSummary) -> int | None:
    progress = summary.progress
    if summary.status is not JobStatus.RUNNING or progress is None:
        return None
    if progress.remaining_s is None or progress.at is None:
        return None
    return int(progress.at.timestamp() + progress.remaining_s)


def trained_tokens(summary: JobSummary, status: str) -> int | None:
    """From the trainer's log where it reports them (``num_input_tokens_seen``)."""
    if status != "succeeded" or summary.progress is None:
        return None
    return summary.progress.tokens_seen


def job_error(summary: JobSummary) -> JobError:
    """The error of a failed job: its failure kind as the code, with the decisive line."""
    message = summary.failure_reason or "the training failed"
    failure = summary.failure
    if failure is not None:
        if failure.log_line:
            message = f"{message}: {failure.log_line}"
        return JobError(code=failure.kind, message=message)
    code = "exit_code_" + str(summary.exit_code) if summary.exit_code is not None else "failed"
    return JobError(code=code, message=message)


def job_object(summary: JobSummary, result_files: list[str]) -> FineTuningJob:
    status = openai_status(summary)
    hyper = hyperparameters_of(summary.train_args)
    error = None
    if status == "failed":
        error = job_error(summary)
    return FineTuningJob(
        id=summary.job_id,
        created_at=unix(summary.submitted_at) or 0,
        error=error,
        fine_tuned_model=fine_tuned_model(summary),
        finished_at=unix(summary.finished_at) if status in _FINAL else None,
        hyperparameters=hyper,
        model=summary.model_path,
        organization_id=ORGANIZATION_ID,
        result_files=result_files,
        seed=summary.train_args.seed if summary.train_args.seed is not None else DEFAULT_SEED,
        status=status,
        trained_tokens=trained_tokens(summary, status),
        training_file=summary.training_file or summary.data_path,
        validation_file=summary.validation_file,
        estimated_finish=estimated_finish(summary),
        integrations=integrations_out(summary),
        metadata=dict(summary.metadata) or None,
        method=method_of(summary, hyper),
        user_provided_suffix=summary.suffix,
    )


# --- create ----------------------------------------------------------------------------------


def _chosen(hyper: Hyperparameters | None, name: str) -> Any:
    value = getattr(hyper, name, None) if hyper is not None else None
    return None if value == "auto" else value


def integrations_of(
    integrations: list[Any],
) -> tuple[list[str] | None, dict[str, Any] | None]:
    """``report_to`` and ``tracking`` of OpenAI's ``integrations`` (``wandb`` only).

    TensorBoard stays on beside W&B, so the run's event files are in its output folder too.
    """
    if not integrations:
        return None, None
    if len(integrations) > 1:
        raise OpenAIProblem(
            "validation_error", "give at most one integration", param="integrations"
        )
    item = integrations[0]
    if not isinstance(item, dict) or item.get("type") != "wandb":
        raise OpenAIProblem(
            "validation_error",
            "the only integration is {type: 'wandb', wandb: {project, name, entity, tags}}",
            param="integrations",
        )
    wandb = item.get("wandb") or {}
    if not isinstance(wandb, dict) or not set(wandb) <= {"project", "name", "entity", "tags"}:
        raise OpenAIProblem(
            "validation_error",
            "wandb takes project, name, entity and tags",
            param="integrations.wandb",
        )
    tracking = {k: v for k, v in wandb.items() if v is not None}
    return ["tensorboard", "wandb"], tracking


def integrations_out(summary: JobSummary) -> list[Any] | None:
    """The ``integrations`` a job was created with, as OpenAI shows them."""
    if "wandb" not in (summary.train_args.report_to or ()):
        return None
    tracking = summary.tracking
    wandb: dict[str, Any] = {}
    if tracking is not None:
        wandb = {k: v for k, v in msgspec.to_builtins(tracking).items() if v}
    return [{"type": "wandb", "wandb": wandb}]


def spec_for_request(
    body: CreateFineTuningJob, job_id: str, *, seed: int, auto_export: bool
) -> JobSpec:
    """The native spec of an OpenAI create request (``auto`` means the native default)."""
    report_to, tracking = integrations_of(body.integrations or [])
    method = body.method.type if body.method is not None else "supervised"
    hyper: Hyperparameters | None = body.hyperparameters
    beta = None
    if body.method is not None and body.method.type == "dpo" and body.method.dpo is not None:
        hyper = body.method.dpo.hyperparameters or hyper
        beta = _chosen(body.method.dpo.hyperparameters, "beta")
    elif body.method is not None and body.method.supervised is not None:
        hyper = body.method.supervised.hyperparameters or hyper
    multiplier = _chosen(hyper, "learning_rate_multiplier")
    learning_rate = None
    if multiplier is not None:
        learning_rate = _DEFAULTS.learning_rate * float(multiplier)
        if not math.isfinite(learning_rate) or learning_rate <= 0:
            raise OpenAIProblem(
                "validation_error",
                "learning_rate_multiplier must be a positive number",
                param="hyperparameters.learning_rate_multiplier",
            )
    fields: dict[str, Any] = {
        "model_path": body.model,
        "output_dir": f"output/{job_id}",
        "training_file": body.training_file,
        "method": method,
        "auto_export": auto_export,
        "train_args": {
            k: v
            for k, v in {
                "num_epochs": _chosen(hyper, "n_epochs"),
                "batch_size": _chosen(hyper, "batch_size"),
                "learning_rate": learning_rate,
                "seed": seed,
                "report_to": report_to,
            }.items()
            if v is not None
        },
    }
    if tracking is not None:
        fields["tracking"] = tracking
    if body.validation_file is not None:
        fields["validation_file"] = body.validation_file
    if beta is not None:
        fields["dpo_beta"] = beta
    if body.suffix is not None:
        fields["suffix"] = body.suffix
    if body.metadata:
        fields["metadata"] = dict(body.metadata)
    return decode_spec(fields)


# --- events and checkpoints ------------------------------------------------------------------

_LEVEL: Final[dict[str, Literal["info", "warn", "error"]]] = {
    "JobFailed": "error",
    "ExportFailed": "error",
    "JobLost": "warn",
    "AssignmentRejected": "warn",
    "JobRequeued": "warn",
    "JobPreempted": "warn",
    "JobTimedOut": "warn",
    "JobWarned": "warn",
}


def event_id(position: int) -> str:
    return f"ftevent-{position}"


def position_of_event(identifier: str) -> int:
    digits = identifier.removeprefix("ftevent-")
    if digits == identifier or not digits.isdigit():
        raise OpenAIProblem(
            "validation_error", f"{identifier!r} is not an event id of this API", param="after"
        )
    return int(digits)


def _message(entry: EventLogEntry) -> str:  # noqa: C901 - one sentence per event type
    d = entry.data
    match entry.type:
        case "JobSubmitted":
            return "Created fine-tuning job"
        case "JobQueued" | "JobRequeued":
            why = d.get("reason", "")
            return f"Fine-tuning job queued ({why})" if why else "Fine-tuning job queued"
        case "JobScheduled":
            return f"Placed on runner {d.get('runner_id')} GPUs {d.get('gpu_ids')}"
        case "JobStarted":
            return "Fine-tuning job started"
        case "JobProgressed":
            return f"Step {d.get('step')}/{d.get('max_steps')}: training loss={d.get('loss')}"
        case "CheckpointSaved":
            return f"Checkpoint saved at step {d.get('step')}"
        case "JobSucceeded":
            return "The job has successfully completed"
        case "JobFailed":
            return f"Fine-tuning job failed: {d.get('reason')}"
        case "StopRequested":
            return f"{str(d.get('intent', 'stop')).capitalize()} requested: {d.get('reason')}"
        case "JobPaused":
            return "Fine-tuning job paused"
        case "JobCancelled":
            return "Fine-tuning job cancelled"
        case "JobStopped":
            return f"Fine-tuning job stopped: {d.get('reason')}"
        case "JobPreempted":
            return (
                f"Fine-tuning job {d.get('reason')}; it is queued again and resumes from its "
                "latest checkpoint"
            )
        case "JobTimedOut":
            return f"Fine-tuning job timed out: it {d.get('reason')}"
        case "ExportSucceeded":
            return f"Merged model saved to {d.get('artifact_path')}"
        case "ExportFailed":
            return f"Merging the model failed: {d.get('reason')}"
        case "JobWarned":
            return f"Warning ({d.get('warning')}): {d.get('reason')}"
        case "CheckpointRemoved":
            return f"Checkpoint removed: {d.get('path')} ({d.get('reason')})"
    return entry.type


def event_object(entry: EventLogEntry) -> FineTuningJobEvent:
    if entry.type == "JobProgressed":
        d = entry.data
        data = {
            "step": d.get("step"),
            "total_steps": d.get("max_steps"),
            "train_loss": d.get("loss"),
            "learning_rate": d.get("learning_rate"),
            "epoch": d.get("epoch"),
            "grad_norm": d.get("grad_norm"),
            "valid_loss": d.get("eval_loss"),
        }
        kind: Literal["message", "metrics"] = "metrics"
    else:
        data, kind = {}, "message"
    return FineTuningJobEvent(
        id=event_id(entry.position),
        created_at=int(entry.at.timestamp()),
        level=_LEVEL.get(entry.type, "info"),
        message=_message(entry),
        type=kind,
        data={k: v for k, v in data.items() if v is not None},
    )


def checkpoint_id(job_id: str, step: int) -> str:
    return f"ftckpt-{job_id}-{step}"


def checkpoint_objects(
    summary: JobSummary, points: list[MetricPoint]
) -> list[FineTuningJobCheckpoint]:
    """Newest first; metrics are the last logged point at or before the checkpoint's step."""
    result = []
    for checkpoint in summary.checkpoints:
        before = [p for p in points if p.step <= checkpoint.step]
        point = before[-1] if before else None
        losses = [p.eval_loss for p in before if p.eval_loss is not None]
        at = point.at if point is not None else summary.started_at or summary.submitted_at
        result.append(
            FineTuningJobCheckpoint(
                id=checkpoint_id(summary.job_id, checkpoint.step),
                created_at=unix(at) or 0,
                fine_tuned_model_checkpoint=checkpoint.path,
                fine_tuning_job_id=summary.job_id,
                metrics=CheckpointMetrics(
                    step=float(checkpoint.step),
                    train_loss=point.loss if point is not None else None,
                    valid_loss=losses[-1] if losses else None,
                ),
                step_number=checkpoint.step,
            )
        )
    result.reverse()
    return result
