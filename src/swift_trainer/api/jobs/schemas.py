"""Request and response bodies of the job endpoints.

Requests forbid unknown fields, so a misspelt option is an error rather than a silent
default. Field constraints reuse the job spec's own types, and the spec is validated again
by the domain on submission, so the API cannot accept what the domain would refuse.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from ...core.failure import Failure
from ...core.ids import JOB_ID_PATTERN
from ...core.job import JobStatus
from ...core.spec import (
    DEFAULT_PRIORITY,
    MAX_GPUS_PER_JOB,
    MAX_NODES_PER_JOB,
    Dependency,
    EvalSpec,
    FileId,
    HostLabel,
    Name,
    Priority,
    ShortText,
    Tracking,
    TrainArgs,
    TrainingMethod,
)
from ...projections.read_models.views import (
    EventLogEntry,
    JobSummary,
    LogLine,
    MetricPoint,
    ProgressView,
)

JobIdText = Annotated[
    str,
    msgspec.Meta(
        pattern=JOB_ID_PATTERN,
        description="Letters, digits, '_' and '-'; at most 64 characters.",
        examples=["training_001"],
    ),
]


class CreateJobRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A training job: ``model_path`` and a dataset (``data_path`` or ``training_file``)."""

    data_path: (
        Annotated[ShortText, msgspec.Meta(description="Dataset id or path; '#N' samples N rows.")]
        | None
    ) = None
    training_file: (
        Annotated[
            FileId, msgspec.Meta(description="An uploaded file (/v1/files) instead of data_path.")
        ]
        | None
    ) = None
    validation_file: (
        Annotated[FileId, msgspec.Meta(description="An uploaded file for --val_dataset.")] | None
    ) = None
    method: TrainingMethod = "supervised"
    dpo_beta: Annotated[float, msgspec.Meta(gt=0, le=10)] | None = None
    auto_export: Annotated[
        bool, msgspec.Meta(description="Merge the LoRA adapter right after success.")
    ] = False
    model_path: Annotated[ShortText, msgspec.Meta(description="Model id or path.")]
    output_dir: (
        Annotated[
            ShortText,
            msgspec.Meta(
                description=(
                    "Relative to the runner's OUTPUT_ROOT; no absolute paths, no '..'. "
                    "Default: output/<job_id>."
                ),
            ),
        ]
        | None
    ) = None
    priority: Priority = DEFAULT_PRIORITY
    job_id: (
        Annotated[
            JobIdText,
            msgspec.Meta(
                description=(
                    "Your id for the job. Default: the last part of output_dir when that is a "
                    "valid, unused id ('output/training_001' -> 'training_001'), "
                    "else a generated one."
                ),
            ),
        ]
        | None
    ) = None
    gpu_count: Annotated[int, msgspec.Meta(ge=1, le=MAX_GPUS_PER_JOB)] = 1
    min_gpu_memory_gb: (
        Annotated[float, msgspec.Meta(gt=0, le=4096, description="Per GPU, decimal GB.")] | None
    ) = None
    gpu_name: (
        Annotated[Name, msgspec.Meta(description="Case-insensitive part of the GPU name.")] | None
    ) = None
    train_args: TrainArgs = TrainArgs()
    auto_start: Annotated[
        bool, msgspec.Meta(description="False: the job is held until started by hand.")
    ] = True
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=20)] = 2
    labels: dict[Name, Annotated[str, msgspec.Meta(max_length=256)]] = {}
    after: Annotated[
        tuple[Dependency, ...],
        msgspec.Meta(
            description="Jobs to wait for: the job is 'waiting' until each has ended as "
            "'on' says (succeeded, failed or ended), then queues."
        ),
    ] = ()
    tracking: Annotated[
        Tracking | None,
        msgspec.Meta(
            description="How trackers in train_args.report_to file the run (project, "
            "entity, name, tags); credentials come from the runner's environment."
        ),
    ] = None
    preemptible: Annotated[
        bool,
        msgspec.Meta(
            description="A job of higher priority may stop this one with a checkpoint to "
            "take its GPUs; it then waits in the queue and resumes from the checkpoint."
        ),
    ] = True
    preempt_grace_s: (
        Annotated[
            float,
            msgspec.Meta(
                gt=0,
                le=86_400,
                description="Seconds to write a checkpoint when preempted (default: the "
                "scheduler's PREEMPT_GRACE_S, 120).",
            ),
        ]
        | None
    ) = None
    max_runtime: (
        Annotated[int, msgspec.Meta(ge=1, description="Seconds over all attempts.")]
        | Annotated[
            str,
            msgspec.Meta(
                max_length=32,
                description="Over all attempts, such as '90m', '6h' or '2d'; at the limit the "
                "job stops with a checkpoint and ends timed_out.",
            ),
        ]
        | None
    ) = None
    nodes: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            le=MAX_NODES_PER_JOB,
            description="Hosts the job spans: gpu_count GPUs on each of this many runners.",
        ),
    ] = 1
    host_labels: Annotated[
        dict[HostLabel, HostLabel],
        msgspec.Meta(description="Only runners carrying all these labels (runner --label)."),
    ] = {}
    eval: Annotated[
        EvalSpec | None,
        msgspec.Meta(
            description="Evaluate the trained model with swift eval (EvalScope) on the job's "
            "GPUs once training succeeds; scores appear as eval_results."
        ),
    ] = None

    def __post_init__(self) -> None:
        # A request error (422 validation_error), before the domain ever sees a spec.
        if (self.data_path is None) == (self.training_file is None):
            raise ValueError("give exactly one dataset: data_path or training_file")


class CreateJobResponse(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The create answer; the queue fields appear for a queued job only."""

    job_id: str
    status: JobStatus
    message: str
    output_dir: str
    queue_position: int | None = None
    #: ``about 12 minutes``, or ``unknown`` until the scheduler has estimated it.
    estimated_wait_time: str | None = None
    estimated_wait_s: float | None = None
    estimated_start: datetime | None = None
    #: ``scheduler`` (its forecast); ``scheduler_pending`` (not ranked yet: no position) or
    #: ``scheduler_placing`` (being placed: no position); ``submission_order`` (no scheduler).
    queue_source: str | None = None


class JobCommandResponse(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    #: The status the command left the job in (as recorded, not as projected later).
    status: JobStatus | None
    message: str
    #: False when the job already was where the command would put it (nothing recorded).
    changed: bool


class ExportRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    checkpoint: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=1024,
                description="A checkpoint path or folder name; default: the latest.",
            ),
        ]
        | None
    ) = None
    overwrite: Annotated[
        bool, msgspec.Meta(description="Export again even if this checkpoint was exported.")
    ] = False


class ExportResponse(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    message: str
    changed: bool
    export_id: str | None = None
    checkpoint: str | None = None
    #: requested | running | succeeded | failed
    export_status: str | None = None
    artifact_path: str | None = None


class PriorityRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    priority: Priority


class PriorityResponse(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    priority: int
    status: JobStatus | None
    message: str
    changed: bool


class JobStatusResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The status read: a field subset of the stored summary, decoded straight from it."""

    job_id: str
    status: JobStatus
    priority: int
    version: int
    attempt: int
    retries: int
    gpu_count: int
    runner_id: str | None = None
    gpu_ids: tuple[int, ...] = ()
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    progress: ProgressView | None = None
    failure_reason: str | None = None
    stop_reason: str | None = None
    exit_code: int | None = None
    #: What the last failed attempt died of: ``kind``, ``detail`` and ``log_line``.
    failure: Failure | None = None


class ProgressResponse(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    status: JobStatus
    step: int | None = None
    max_steps: int | None = None
    percent: float | None = None
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    eval_loss: float | None = None
    elapsed_s: float | None = None
    remaining_s: float | None = None
    #: ``about 5 minutes``
    elapsed: str | None = None
    remaining: str | None = None
    memory_gib: float | None = None
    train_speed: float | None = None
    #: When the runner reported this progress.
    at: datetime | None = None
    #: The loss curve, oldest point first (only with ``?history=true``).
    history: list[MetricPoint] | None = None


class JobListResponse(msgspec.Struct, frozen=True, kw_only=True):
    items: list[JobSummary]
    #: Pass as ``cursor`` for the next page; null on the last page.
    next_cursor: str | None = None


class LogsResponse(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    lines: list[LogLine]
    #: Pass as ``after`` to get only newer lines (the last line's ``seq``).
    next_after: int | None = None


class EventsResponse(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    events: list[EventLogEntry]
    #: Pass as ``after`` for the next page (the last event's global position).
    next_after: int
    #: The page is full: there may be more after ``next_after``.
    has_more: bool


JobDetails = JobSummary

__all__ = [
    "CreateJobRequest",
    "CreateJobResponse",
    "EventsResponse",
    "ExportRequest",
    "ExportResponse",
    "JobCommandResponse",
    "JobDetails",
    "JobIdText",
    "JobListResponse",
    "JobStatusResponse",
    "LogsResponse",
    "PriorityRequest",
    "PriorityResponse",
    "ProgressResponse",
]
