"""The read side's shapes: what the API serves and what each backend stores.

Every view is a frozen msgspec struct, so a backend that stores bytes (Redis) and one that
keeps objects (memory) hold the same values, and a snapshot of either compares with ``==``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from swift_trainer.core.failure import Failure
from swift_trainer.core.gang import RankPlacement
from swift_trainer.core.job import (
    AttemptFailure,
    Checkpoint,
    Export,
    JobState,
    JobStatus,
    JobWarning,
)
from swift_trainer.core.progress import TrainingMetrics
from swift_trainer.core.queue_processor import QueueProcessorState
from swift_trainer.core.spec import Dependency, Tracking, TrainArgs


class Limits(msgspec.Struct, frozen=True):
    """Per-job caps, so one chatty job cannot grow a read model without bound.

    The event store keeps the full record; these bound only what the read side holds.
    """

    metric_points: int = 10_000
    events_per_job: int = 10_000
    log_lines: int = 5_000

    def __post_init__(self) -> None:
        if min(self.metric_points, self.events_per_job, self.log_lines) < 1:
            raise ValueError(f"read-model limits must be at least 1: {self!r}")


class ProgressView(TrainingMetrics, frozen=True, omit_defaults=False, kw_only=True):
    """The latest progress report, with ``percent`` worked out once for every reader."""

    percent: float | None = None
    at: datetime | None = None


class JobSummary(msgspec.Struct, frozen=True):
    """One job as the API shows it; stored whole so a status read is one key lookup."""

    job_id: str
    status: JobStatus
    priority: int
    #: Stream version of the last applied event (the aggregate's version).
    version: int
    #: Global position of the submission: the list order and the list cursor.
    submitted_position: int
    updated_position: int
    data_path: str
    model_path: str
    output_dir: str
    gpu_count: int
    labels: dict[str, str]
    train_args: TrainArgs
    auto_start: bool
    max_retries: int
    gpu_name: str | None
    min_gpu_memory_gb: float | None
    attempt: int
    retries: int
    runner_id: str | None
    last_runner_id: str | None
    gpu_ids: tuple[int, ...]
    pid: int | None
    resume_from: str | None
    submitted_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime | None
    progress: ProgressView | None
    last_checkpoint: Checkpoint | None
    checkpoints: tuple[Checkpoint, ...]
    exports: tuple[Export, ...]
    failure_reason: str | None
    exit_code: int | None
    stop_reason: str | None
    #: Uploaded files (``/v1/files``) the job trains and evaluates on, when it names them.
    training_file: str | None = None
    validation_file: str | None = None
    method: str = "supervised"
    dpo_beta: float | None = None
    auto_export: bool = False
    suffix: str | None = None
    metadata: dict[str, str] = {}
    #: The API key owner who submitted the job (None: the operator, or before owners).
    owner: str | None = None
    #: The jobs this one waits for, and on what (status ``waiting`` until all hold).
    after: tuple[Dependency, ...] = ()
    #: How experiment trackers file the run (project, run name, tags).
    tracking: Tracking | None = None
    #: Preemption and time limits: whether it may be preempted, how often it was, the job
    #: taking its GPUs while a preemption is under way, and its ``max_runtime``.
    preemptible: bool = True
    preemptions: int = 0
    preempted_by: str | None = None
    max_runtime: int | str | None = None
    #: What the last failed attempt died of: kind, meaning and the decisive log line.
    failure: Failure | None = None
    #: Every classified failure, by attempt.
    failures: tuple[AttemptFailure, ...] = ()
    #: The training arguments a retry changed (a halved batch); None: ``train_args``.
    retry_train_args: TrainArgs | None = None
    #: GPUs (by UUID) this job avoids after faults on them.
    excluded_gpus: tuple[str, ...] = ()
    #: Scores of the evaluation after training, by dataset; and why it failed, if it did.
    eval_results: dict[str, float] = {}
    eval_error: str | None = None
    #: The model folder evaluated: a LoRA job's merged model, a full fine-tune's checkpoint.
    eval_model: str | None = None
    #: What the runner changed to start the job (an unreachable experiment tracker).
    start_warnings: tuple[str, ...] = ()
    #: Tracker -> the page of the job's run there (``mlflow``, ``wandb``).
    tracker_urls: dict[str, str] = {}
    #: Warnings about running attempts (``resume_stalled``, ``idle``).
    warnings: tuple[JobWarning, ...] = ()
    #: Hosts the job spans (``gpu_count`` GPUs on each) and the runner labels it asks for.
    nodes: int = 1
    host_labels: dict[str, str] = {}
    #: Every rank's runner while the job holds GPUs, rank 0 (``runner_id``) first.
    hosts: tuple[str, ...] = ()
    #: A multi-node job's ranks past rank 0: runner and GPUs of each.
    peers: tuple[RankPlacement, ...] = ()


class JobFold(msgspec.Struct, frozen=True):
    """What the projector remembers per job between events: the aggregate state and where.

    Kept apart from the summary so the summary can change shape for readers without the
    projector losing anything ``evolve`` needs. A deleted job keeps a tombstone fold, so a
    re-submitted id continues the stream's version count like the aggregate does.
    """

    state: JobState
    submitted_position: int = 0
    updated_position: int = 0
    updated_at: datetime | None = None


class MetricPoint(msgspec.Struct, frozen=True, omit_defaults=True):
    """One point of the loss curve."""

    step: int
    at: datetime
    loss: float | None = None
    learning_rate: float | None = None
    eval_loss: float | None = None
    epoch: float | None = None
    #: Added for the dashboard's grad-norm chart; points stored before it have none.
    grad_norm: float | None = None


class EventLogEntry(msgspec.Struct, frozen=True):
    """One event of a job's history as the events endpoint lists it."""

    position: int
    version: int
    event_id: str
    type: str
    at: datetime
    #: The event's own fields, minus the envelope, with long text shortened. Their schema,
    #: per ``type``, is the event contract (``/asyncapi.json``, ``docs/contract``).
    data: dict[str, Any]
    actor: str | None = None


class LogLine(msgspec.Struct, frozen=True, omit_defaults=True):
    """A line of a job's training output.

    ``seq`` is assigned by the writer (the runner) and must grow across a job's attempts;
    a line whose ``seq`` is already stored is taken for a redelivery and dropped. The ranks
    of a multi-node job write on different runners, so a line may arrive after one with a
    higher ``seq``: it is kept in its place.
    """

    seq: int
    text: str
    at: datetime | None = None
    attempt: int = 0
    stream: str = "stdout"
    #: The rank of a multi-node job that wrote it (None: a one-node job).
    rank: int | None = None


class QueueEntry(msgspec.Struct, frozen=True, omit_defaults=True):
    """A waiting job's place, as the scheduler last computed it (1 = next to start)."""

    job_id: str
    position: int
    priority: int
    estimated_start: datetime | None = None
    #: Why no known runner could ever run it (too many GPUs, constraints nothing meets), or
    #: why it is held back for now (a runner refused it a moment ago).
    unplaceable: str | None = None
    gpu_count: int = 1
    #: ``owner_gpu_quota`` when its owner's ``max_gpus`` keeps it waiting; the reason says
    #: the limit (and names the owner, so other owners' users do not see it). ``preempting``
    #: while jobs of lower priority stop to make room for it; the reason names them.
    blocked_by: str | None = None
    blocked_reason: str | None = None
    #: Hosts the job spans (``gpu_count`` GPUs on each).
    nodes: int = 1


class DrainView(msgspec.Struct, frozen=True):
    """A drained runner: it takes no new jobs."""

    runner_id: str
    reason: str
    at: datetime
    stop_jobs: bool = False


class GpuHealthView(msgspec.Struct, frozen=True):
    """A GPU out of placement, and why."""

    runner_id: str
    uuid: str
    index: int
    reasons: tuple[str, ...]
    since: datetime


class FleetView(msgspec.Struct, frozen=True):
    """Drained runners and unhealthy GPUs, as the fleet's events say."""

    drained: tuple[DrainView, ...] = ()
    unhealthy_gpus: tuple[GpuHealthView, ...] = ()


class QueueView(msgspec.Struct, frozen=True):
    """The scheduler's latest queue, stored as computed and served as is."""

    entries: tuple[QueueEntry, ...] = ()
    computed_at: datetime | None = None
    #: The last event position the scheduler had seen, so readers can tell how fresh it is.
    as_of_position: int = 0
    #: Drained runners and unhealthy GPUs, with their reasons.
    fleet: FleetView = FleetView()

    def entry(self, job_id: str) -> QueueEntry | None:
        return next((x for x in self.entries if x.job_id == job_id), None)


class RunnerSnapshot(msgspec.Struct, frozen=True):
    """A runner's latest heartbeat, opaque here: the runner defines its shape."""

    runner_id: str
    seen_at: datetime
    data: bytes


class JobPage(msgspec.Struct, frozen=True):
    items: list[JobSummary]
    #: Pass back as ``cursor`` for the next page; ``None`` when this is the last one.
    next_cursor: str | None = None


class ReadModelSnapshot(msgspec.Struct, frozen=True):
    """Every event-derived value a backend holds, in a canonical, comparable form.

    Built from the backend's raw storage rather than through the queries, so a leaked key
    or an index that drifted from the summaries shows up as a difference. Runner-fed data
    (logs, GPU heartbeats, the scheduler's queue) is left out: replaying the store cannot
    reproduce it.
    """

    applied_position: int
    processor: QueueProcessorState
    jobs: dict[str, JobSummary]
    folds: dict[str, JobFold]
    #: Index name (see ``projection.index_names``) to ``(job_id, submitted_position)`` pairs,
    #: oldest first.
    indexes: dict[str, list[tuple[str, int]]]
    events: dict[str, list[EventLogEntry]]
    metrics: dict[str, list[MetricPoint]]
    #: Keys under the prefix that no part of the layout accounts for (should stay empty).
    stray_keys: list[str] = []
