"""Commands: what users, the scheduler and runners ask of a job.

A command is a request that may be refused; the events it produces are facts. Runner
reports carry the ``attempt`` they were started for, so a report from an attempt the
scheduler has since given up on (a runner that came back after its lease expired) is
refused as stale instead of corrupting the current attempt.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Final, Literal

import msgspec

from .errors import MessageError, UnknownMessageType
from .failure import Failure
from .gang import RankPlacement
from .ids import JOB_ID_PATTERN
from .limits import MAX_REASON_CHARS
from .progress import MetricSample
from .spec import JobSpec, Priority
from .sweep_space import SweepSpec

JobId = Annotated[str, msgspec.Meta(pattern=JOB_ID_PATTERN)]
Reason = Annotated[str, msgspec.Meta(max_length=MAX_REASON_CHARS)]
#: A link to a run in an experiment tracker (never with credentials in it).
TrackerUrl = Annotated[str, msgspec.Meta(max_length=2048, pattern=r"^https?://")]


class Command(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    """Base of every command; the ``type`` tag is the class name."""

    schema_version: ClassVar[int] = 1


class JobCommand(Command, frozen=True):
    job_id: JobId


# --- from users -----------------------------------------------------------------------------


class SubmitJob(JobCommand, frozen=True, tag=True):
    spec: JobSpec


class StartJob(JobCommand, frozen=True, tag=True):
    """Release a held job, or resume a stopped or failed one from its last checkpoint."""


class StopJob(JobCommand, frozen=True, tag=True):
    reason: Reason = "stopped by user"


class PauseJob(JobCommand, frozen=True, tag=True):
    """Stop with a checkpoint and rest as ``paused``, to be resumed (``ResumeJob``) later."""

    reason: Reason = "paused by user"


class ResumeJob(JobCommand, frozen=True, tag=True):
    """Queue a paused job again, from its last checkpoint."""


class CancelJob(JobCommand, frozen=True, tag=True):
    """End a job for good: unlike a stop, a cancelled job cannot be started again."""

    reason: Reason = "cancelled by user"


class ReleaseWaitingJob(JobCommand, frozen=True, tag=True):
    """Queue a waiting job: every condition of its ``after`` holds (sent by the releaser)."""

    reason: Reason = "dependencies met"


class ChangePriority(JobCommand, frozen=True, tag=True):
    priority: Priority


class RequestExport(JobCommand, frozen=True, tag=True):
    """Merge the LoRA adapter of a checkpoint (the latest when none is named)."""

    checkpoint: str | None = None
    overwrite: bool = False


class DeleteJob(JobCommand, frozen=True, tag=True):
    pass


# --- from the scheduler ---------------------------------------------------------------------


class ScheduleJob(JobCommand, frozen=True, tag=True):
    """Place a queued job on GPUs of one runner; ``attempt`` must be the job's next attempt."""

    attempt: int
    runner_id: str
    gpu_ids: tuple[int, ...]
    gpu_uuids: tuple[str, ...] = ()
    #: A multi-node job's ranks 1 and up, each on its own runner (rank 0 is ``runner_id``).
    peers: tuple[RankPlacement, ...] = ()


class MarkLost(JobCommand, frozen=True, tag=True):
    """The job's runner stopped heartbeating, or its process vanished."""

    attempt: int
    reason: Reason = "runner lease expired"


class PreemptJob(JobCommand, frozen=True, tag=True):
    """Stop a running job with a checkpoint so that ``preempted_by`` can take its GPUs.

    The job goes back to the queue when it has stopped; ``grace_s`` is how long it has to
    write its checkpoint, ``reserved_gpu_ids`` the GPUs of its host the preemptor gets.
    """

    attempt: int
    preempted_by: JobId
    reason: Reason
    grace_s: Annotated[float, msgspec.Meta(gt=0)]
    reserved_gpu_ids: tuple[int, ...] = ()


class TimeOutJob(JobCommand, frozen=True, tag=True):
    """Stop a job with a checkpoint because it reached its ``max_runtime``."""

    attempt: int
    reason: Reason


# --- from runners ---------------------------------------------------------------------------


class RunnerReport(JobCommand, frozen=True):
    attempt: int
    runner_id: str


class ReportStarted(RunnerReport, frozen=True, tag=True):
    pid: int
    command: tuple[str, ...]
    #: What the runner had to change to start the run (an unreachable experiment tracker).
    warnings: tuple[Reason, ...] = ()
    #: Tracker -> the page of the run it files the training under (``mlflow``, ``wandb``).
    tracker_urls: dict[Annotated[str, msgspec.Meta(max_length=32)], TrackerUrl] = {}


class RejectAssignment(RunnerReport, frozen=True, tag=True):
    """The runner cannot start the job (GPU taken by a foreign process, disk full)."""

    reason: Reason


class ReportProgress(RunnerReport, frozen=True, tag=True):
    step: int
    max_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    elapsed_s: float | None = None
    remaining_s: float | None = None
    memory_gib: float | None = None
    train_speed: float | None = None
    eval_loss: float | None = None
    tokens_seen: int | None = None
    #: Steps logged since the previous report, oldest first (at most 1,000).
    earlier: tuple[MetricSample, ...] = ()


class ReportCheckpoint(RunnerReport, frozen=True, tag=True):
    step: int
    path: str


class ReportCheckpointsRemoved(RunnerReport, frozen=True, tag=True):
    """Checkpoints the runner reported before are gone from disk."""

    paths: tuple[Annotated[str, msgspec.Meta(max_length=4096)], ...]
    reason: Reason = "no longer on disk"


class ReportSucceeded(RunnerReport, frozen=True, tag=True):
    final_step: int | None = None
    output_path: str | None = None
    #: Scores of the evaluation after training (``spec.eval``), by dataset.
    eval_results: dict[str, float] = {}
    #: Why that evaluation failed; the training succeeded all the same.
    eval_error: Reason | None = None
    #: The model folder evaluated: a LoRA job's merged model, a full fine-tune's checkpoint.
    eval_model: Annotated[str, msgspec.Meta(max_length=4096)] | None = None


class ReportFailed(RunnerReport, frozen=True, tag=True):
    exit_code: int | None
    reason: Reason
    stderr_tail: Annotated[str, msgspec.Meta(max_length=65536)] = ""
    #: The runner's classification of the cause.
    failure: Failure | None = None


class ReportStopped(RunnerReport, frozen=True, tag=True):
    checkpoint: str | None = None


class ReportRendezvous(RunnerReport, frozen=True, tag=True):
    """Rank 0 of a multi-node job has started: the address and port the others join."""

    master_addr: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    master_port: Annotated[int, msgspec.Meta(ge=1, le=65535)]


class ExportReport(JobCommand, frozen=True):
    export_id: str
    runner_id: str


class ReportExportStarted(ExportReport, frozen=True, tag=True):
    pid: int
    command: tuple[str, ...] = ()


class ReportExportSucceeded(ExportReport, frozen=True, tag=True):
    artifact_path: str


class ReportExportFailed(ExportReport, frozen=True, tag=True):
    exit_code: int | None
    reason: Reason


# --- the GPU ledger (scheduler) -------------------------------------------------------------


class ClaimGpus(Command, frozen=True, tag=True):
    """Reserve GPUs of one runner for one attempt of a job, before scheduling it there.

    All claims live in one ledger stream, so two schedulers racing for a GPU are ordered by
    that stream's optimistic concurrency, which per-job streams cannot do.
    """

    job_id: JobId
    attempt: int
    runner_id: str
    gpu_ids: tuple[int, ...]
    #: A multi-node job's other ranks: claimed in the same append, or not at all.
    peers: tuple[RankPlacement, ...] = ()


class ReleaseGpus(Command, frozen=True, tag=True):
    """The attempt no longer holds its GPUs (it ended, or was never scheduled)."""

    job_id: JobId
    attempt: int
    reason: Reason = ""


# --- the queue processor (scheduler on/off switch) ------------------------------------------


class DrainRunner(Command, frozen=True, tag=True):
    """Take no new jobs on a runner; ``stop_jobs`` also requeues its running ones."""

    runner_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_REASON_CHARS)]
    stop_jobs: bool = False


class UndrainRunner(Command, frozen=True, tag=True):
    runner_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    reason: Reason = "undrained"


class RecordGpuHealth(Command, frozen=True, tag=True):
    """A GPU's health as its runner's heartbeat shows it; no reasons means healthy."""

    runner_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    gpu_uuid: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    gpu_index: int
    reasons: tuple[Annotated[str, msgspec.Meta(max_length=256)], ...] = ()


class RequeueJob(JobCommand, frozen=True, tag=True):
    """Stop a running job with a checkpoint and queue it again (a drain, a sick GPU)."""

    reason: Reason


class FlagJob(JobCommand, frozen=True, tag=True):
    """A warning about a running attempt: ``resume_stalled`` or ``idle``."""

    attempt: int
    warning: Literal["resume_stalled", "idle"]
    reason: Reason


class PauseQueueProcessor(Command, frozen=True, tag=True):
    reason: Reason = ""


class ResumeQueueProcessor(Command, frozen=True, tag=True):
    pass


#: An owner or key id: letters, digits, ``_ . @ -``, at most 64 characters.
NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$(?!\n)"
OwnerName = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
KeyId = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
Sha256Hex = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$(?!\n)")]
Limit = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
Role = Literal["admin", "user", "viewer"]


# --- access: API keys and quotas (admin; see core/access.py) ---------------------------


class IssueKey(Command, frozen=True, tag=True):
    key_id: KeyId
    owner: OwnerName
    role: Role
    secret_sha256: Sha256Hex


class RevokeKey(Command, frozen=True, tag=True):
    key_id: KeyId
    reason: Annotated[str, msgspec.Meta(max_length=1024)] = ""


class SetQuota(Command, frozen=True, tag=True):
    """An owner's limits; ``None`` lifts a limit."""

    owner: OwnerName
    max_gpus: Limit | None = None
    max_queued_jobs: Limit | None = None


AnyAccessCommand = IssueKey | RevokeKey | SetQuota


# --- sweeps (the ``sweep-<id>`` streams, see ``core.sweep``) ------------------------------------

SweepId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$(?!\n)")]
#: How a trial ended, as its sweep records it.
TrialOutcome = Literal["succeeded", "failed", "stopped", "cancelled", "early_stopped"]


class SweepCommand(Command, frozen=True):
    sweep_id: SweepId


class CreateSweep(SweepCommand, frozen=True, tag=True):
    spec: SweepSpec


class BeginTrial(SweepCommand, frozen=True, tag=True):
    """Record that trial ``index`` is submitted now (the next one, within ``max_parallel``)."""

    index: Annotated[int, msgspec.Meta(ge=0)]


class EndTrial(SweepCommand, frozen=True, tag=True):
    """Record how trial ``index`` ended, with its final metric when it has one."""

    index: Annotated[int, msgspec.Meta(ge=0)]
    outcome: TrialOutcome
    metric: float | None = None


class StopSweep(SweepCommand, frozen=True, tag=True):
    """Stop (``stop``) or cancel (``cancel``) every trial at once; no new trial begins."""

    intent: Literal["stop", "cancel"] = "stop"
    reason: Reason = "stopped by user"


AnySweepCommand = CreateSweep | BeginTrial | EndTrial | StopSweep


AnyJobCommand = (
    SubmitJob
    | StartJob
    | StopJob
    | PauseJob
    | ResumeJob
    | CancelJob
    | ChangePriority
    | RequestExport
    | DeleteJob
    | ScheduleJob
    | MarkLost
    | PreemptJob
    | TimeOutJob
    | ReportStarted
    | RejectAssignment
    | ReportProgress
    | ReportCheckpoint
    | ReportCheckpointsRemoved
    | ReportSucceeded
    | ReportFailed
    | ReportStopped
    | ReportRendezvous
    | ReportExportStarted
    | ReportExportSucceeded
    | ReportExportFailed
    | ReleaseWaitingJob
    | RequeueJob
    | FlagJob
)
ProcessorCommand = PauseQueueProcessor | ResumeQueueProcessor
FleetCommand = DrainRunner | UndrainRunner | RecordGpuHealth
LedgerCommand = ClaimGpus | ReleaseGpus
AnyCommand = (
    AnyJobCommand
    | ProcessorCommand
    | LedgerCommand
    | AnyAccessCommand
    | AnySweepCommand
    | FleetCommand
)

_decoder: msgspec.json.Decoder[AnyCommand] = msgspec.json.Decoder(AnyCommand)
_encoder = msgspec.json.Encoder()


def encode_command(command: AnyCommand) -> bytes:
    return _encoder.encode(command)


def decode_command(data: bytes) -> AnyCommand:
    """Decode a command from the wire; every problem becomes a MessageError with a reason."""
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if "Invalid value" in text and "$.type" in text:
            raise UnknownMessageType(f"unknown command type: {text}") from exc
        raise MessageError(f"invalid command: {text}") from exc
    except msgspec.DecodeError as exc:
        raise MessageError(f"command is not valid JSON: {exc}") from exc


def command_to_builtins(command: AnyCommand) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.to_builtins(command)
    return result
