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
from .ids import JOB_ID_PATTERN
from .limits import MAX_REASON_CHARS
from .spec import JobSpec, Priority
from .sweep_space import SweepSpec

JobId = Annotated[str, msgspec.Meta(pattern=JOB_ID_PATTERN)]
Reason = Annotated[str, msgspec.Meta(max_length=MAX_REASON_CHARS)]


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


class MarkLost(JobCommand, frozen=True, tag=True):
    """The job's runner stopped heartbeating, or its process vanished."""

    attempt: int
    reason: Reason = "runner lease expired"


# --- from runners ---------------------------------------------------------------------------


class RunnerReport(JobCommand, frozen=True):
    attempt: int
    runner_id: str


class ReportStarted(RunnerReport, frozen=True, tag=True):
    pid: int
    command: tuple[str, ...]
    #: What the runner had to change to start the run (an unreachable experiment tracker).
    warnings: tuple[Reason, ...] = ()


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


class ReportCheckpoint(RunnerReport, frozen=True, tag=True):
    step: int
    path: str


class ReportSucceeded(RunnerReport, frozen=True, tag=True):
    final_step: int | None = None
    output_path: str | None = None
    #: Scores of the evaluation after training (``spec.eval``), by dataset.
    eval_results: dict[str, float] = {}
    #: Why that evaluation failed; the training succeeded all the same.
    eval_error: Reason | None = None


class ReportFailed(RunnerReport, frozen=True, tag=True):
    exit_code: int | None
    reason: Reason
    stderr_tail: Annotated[str, msgspec.Meta(max_length=65536)] = ""


class ReportStopped(RunnerReport, frozen=True, tag=True):
    checkpoint: str | None = None


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


class ReleaseGpus(Command, frozen=True, tag=True):
    """The attempt no longer holds its GPUs (it ended, or was never scheduled)."""

    job_id: JobId
    attempt: int
    reason: Reason = ""


# --- the queue processor (scheduler on/off switch) ------------------------------------------


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
    | ReportStarted
    | RejectAssignment
    | ReportProgress
    | ReportCheckpoint
    | ReportSucceeded
    | ReportFailed
    | ReportStopped
    | ReportExportStarted
    | ReportExportSucceeded
    | ReportExportFailed
    | ReleaseWaitingJob
)
ProcessorCommand = PauseQueueProcessor | ResumeQueueProcessor
LedgerCommand = ClaimGpus | ReleaseGpus
AnyCommand = AnyJobCommand | ProcessorCommand | LedgerCommand | AnyAccessCommand | AnySweepCommand

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
