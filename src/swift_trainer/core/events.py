"""Events: the immutable facts of a job's life, and how they travel as bytes.

Each event is a frozen msgspec struct tagged with its class name and carrying a
``schema_version``. Schemas only grow by adding fields with defaults, so an event recorded
before a field existed still decodes; a change that cannot be expressed that way registers an
upcaster that rewrites the old payload before decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any, ClassVar, TypeVar

import msgspec

from .errors import InvalidSpec, MessageError, UnknownMessageType
from .failure import Failure
from .gang import RankPlacement
from .progress import MetricSample
from .spec import JobSpec, TrainArgs

T = TypeVar("T")


class Event(msgspec.Struct, frozen=True, tag_field="type", omit_defaults=True):
    """Base of every event; ``at`` is when the fact happened, per the deciding process."""

    schema_version: ClassVar[int] = 1
    at: datetime


class JobEvent(Event, frozen=True):
    job_id: str


class JobSubmitted(JobEvent, frozen=True, tag=True):
    spec: JobSpec


class JobHeld(JobEvent, frozen=True, tag=True):
    """Submitted with ``auto_start: false``: not queued until started."""


class JobReleased(JobEvent, frozen=True, tag=True):
    """A held job was started by a user."""


class JobWaiting(JobEvent, frozen=True, tag=True):
    """The job waits for the jobs its spec names in ``after`` before it is queued."""


class JobQueued(JobEvent, frozen=True, tag=True):
    priority: int
    #: ``submitted``, ``released``, ``resumed``, ``requeued``.
    reason: str = "submitted"
    resume_from: str | None = None


class JobPriorityChanged(JobEvent, frozen=True, tag=True):
    old_priority: int
    new_priority: int


class JobScheduled(JobEvent, frozen=True, tag=True):
    attempt: int
    runner_id: str
    gpu_ids: tuple[int, ...]
    gpu_uuids: tuple[str, ...] = ()
    resume_from: str | None = None
    #: The training arguments of this attempt when a retry changed them (a halved batch);
    #: None means the spec's own.
    train_args: TrainArgs | None = None
    #: A multi-node job's ranks 1 and up; they start once rank 0 publishes the rendezvous.
    peers: tuple[RankPlacement, ...] = ()


class RankStartRequested(JobEvent, frozen=True, tag=True):
    """Start one rank past rank 0 of a multi-node job on its runner, joining rank 0."""

    attempt: int
    rank: int
    runner_id: str
    gpu_ids: tuple[int, ...]
    master_addr: str
    master_port: int
    gpu_uuids: tuple[str, ...] = ()
    resume_from: str | None = None
    #: The attempt's training arguments when a retry changed them (a halved batch), so
    #: every rank trains with what rank 0 trains with; None means the spec's own.
    train_args: TrainArgs | None = None


class RankStarted(JobEvent, frozen=True, tag=True):
    """A rank past rank 0 of a multi-node job started its process."""

    attempt: int
    rank: int
    runner_id: str
    pid: int


class JobStarted(JobEvent, frozen=True, tag=True):
    attempt: int
    runner_id: str
    pid: int
    command: tuple[str, ...]
    #: What the runner had to change to start it (an unreachable experiment tracker).
    warnings: tuple[str, ...] = ()
    #: Tracker -> the page of the run it files the training under (``mlflow``, ``wandb``).
    tracker_urls: dict[str, str] = {}


class JobProgressed(JobEvent, frozen=True, tag=True):
    attempt: int
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
    #: Input tokens trained on so far, where the trainer reports them.
    tokens_seen: int | None = None
    #: Steps logged since the previous report, oldest first (its curve points).
    earlier: tuple[MetricSample, ...] = ()


class CheckpointSaved(JobEvent, frozen=True, tag=True):
    attempt: int
    step: int
    path: str


class CheckpointRemoved(JobEvent, frozen=True, tag=True):
    """A checkpoint is gone from disk (rotated by ``save_total_limit``, or deleted):
    nothing resumes from it or exports it any more."""

    path: str
    reason: str
    attempt: int = 0


class JobSucceeded(JobEvent, frozen=True, tag=True):
    attempt: int
    final_step: int | None = None
    output_path: str | None = None
    #: Scores of the evaluation after training, by dataset; empty without ``spec.eval``.
    eval_results: dict[str, float] = {}
    #: Why the evaluation failed (the training itself succeeded).
    eval_error: str | None = None
    #: The model folder evaluated: a LoRA job's merged model, a full fine-tune's checkpoint.
    eval_model: str | None = None


class JobFailed(JobEvent, frozen=True, tag=True):
    attempt: int
    exit_code: int | None
    reason: str
    stderr_tail: str = ""
    #: What the runner found the cause to be (None: not classified).
    failure: Failure | None = None


class StopRequested(JobEvent, frozen=True, tag=True):
    reason: str
    #: The runner that must act on it (addressing for the runner's subscription).
    runner_id: str | None = None
    attempt: int = 0
    #: What the stop is for, so the runner's confirmation ends the job in the right state:
    #: ``stop`` (``stopped``), ``pause`` (``paused``) or ``cancel`` (``cancelled``),
    #: ``preempt`` (back to ``queued``) or ``timeout`` (``timed_out``).
    intent: str = "stop"
    #: Seconds the process gets to write its checkpoint before the runner kills it
    #: (None: the runner's own grace period).
    grace_s: float | None = None
    #: For a preemption: the job that takes the GPUs, and the GPUs it will start on.
    preempted_by: str | None = None
    reserved_gpu_ids: tuple[int, ...] = ()


class JobStopped(JobEvent, frozen=True, tag=True):
    reason: str
    attempt: int = 0
    checkpoint: str | None = None


class JobPaused(JobEvent, frozen=True, tag=True):
    """Stopped on a user's pause: resumable from ``checkpoint`` with ``ResumeJob``."""

    reason: str
    attempt: int = 0
    checkpoint: str | None = None


class JobCancelled(JobEvent, frozen=True, tag=True):
    """Ended for good on a user's cancel; nothing starts the job again."""

    reason: str
    attempt: int = 0
    checkpoint: str | None = None


class JobPreempted(JobEvent, frozen=True, tag=True):
    """Stopped with a checkpoint to make room for ``preempted_by``; a ``JobRequeued`` follows.

    A preemption does not count against ``max_retries``.
    """

    attempt: int
    reason: str
    preempted_by: str | None = None
    checkpoint: str | None = None


class JobTimedOut(JobEvent, frozen=True, tag=True):
    """Stopped with a checkpoint at its ``max_runtime``; ``start`` resumes it."""

    attempt: int
    reason: str
    checkpoint: str | None = None


class JobLost(JobEvent, frozen=True, tag=True):
    attempt: int
    runner_id: str
    reason: str


class JobRequeued(JobEvent, frozen=True, tag=True):
    """Back in the queue after a loss, a refused start or a failure worth retrying.

    ``retries`` counts against ``max_retries``; a retry after a classified failure names it
    and what it changed: the attempt's training arguments, the GPUs it avoids.
    """

    priority: int
    retries: int
    reason: str
    resume_from: str | None = None
    failure: Failure | None = None
    #: The training arguments from now on (a halved batch); None keeps the current ones.
    train_args: TrainArgs | None = None
    #: GPUs (by UUID) this job no longer runs on.
    excluded_gpus: tuple[str, ...] = ()


class AssignmentRejected(JobEvent, frozen=True, tag=True):
    attempt: int
    runner_id: str
    reason: str


class ExportRequested(JobEvent, frozen=True, tag=True):
    export_id: str
    checkpoint: str
    runner_id: str
    overwrite: bool = False


class ExportStarted(JobEvent, frozen=True, tag=True):
    export_id: str
    runner_id: str
    pid: int
    command: tuple[str, ...] = ()


class ExportSucceeded(JobEvent, frozen=True, tag=True):
    export_id: str
    artifact_path: str


class ExportFailed(JobEvent, frozen=True, tag=True):
    export_id: str
    exit_code: int | None
    reason: str


class JobDeleted(JobEvent, frozen=True, tag=True):
    pass


class JobWarned(JobEvent, frozen=True, tag=True):
    """A running attempt looks wrong: ``resume_stalled`` (a resume did not reach its
    checkpoint's step in time) or ``idle`` (its GPUs sat unused)."""

    attempt: int
    warning: str
    reason: str


class RunnerDrained(Event, frozen=True, tag=True):
    """A runner takes no new jobs; with ``stop_jobs`` its running jobs are requeued."""

    runner_id: str
    reason: str
    stop_jobs: bool = False


class RunnerUndrained(Event, frozen=True, tag=True):
    runner_id: str
    reason: str = ""


class GpuHealthChanged(Event, frozen=True, tag=True):
    """A GPU turned unhealthy (``reasons`` say why) or healthy again."""

    runner_id: str
    gpu_uuid: str
    gpu_index: int
    healthy: bool
    reasons: tuple[str, ...] = ()


class QueueProcessorPaused(Event, frozen=True, tag=True):
    reason: str = ""


class QueueProcessorResumed(Event, frozen=True, tag=True):
    pass


class GpuLedgerEvent(Event, frozen=True):
    """Base of the GPU ledger's events; they name a job but live in the ledger stream."""

    job_id: str
    attempt: int
    runner_id: str
    gpu_ids: tuple[int, ...]
    #: A multi-node job's other ranks, claimed or released with rank 0's GPUs.
    peers: tuple[RankPlacement, ...] = ()


class GpusClaimed(GpuLedgerEvent, frozen=True, tag=True):
    pass


class GpusReleased(GpuLedgerEvent, frozen=True, tag=True):
    reason: str = ""


AnyJobEvent = (
    JobSubmitted
    | JobHeld
    | JobReleased
    | JobQueued
    | JobPriorityChanged
    | JobScheduled
    | RankStartRequested
    | RankStarted
    | JobStarted
    | JobProgressed
    | CheckpointSaved
    | CheckpointRemoved
    | JobSucceeded
    | JobFailed
    | StopRequested
    | JobStopped
    | JobPaused
    | JobCancelled
    | JobLost
    | JobPreempted
    | JobTimedOut
    | JobRequeued
    | AssignmentRejected
    | ExportRequested
    | ExportStarted
    | ExportSucceeded
    | ExportFailed
    | JobDeleted
    | JobWaiting
    | JobWarned
)
ProcessorEvent = QueueProcessorPaused | QueueProcessorResumed
FleetEvent = RunnerDrained | RunnerUndrained | GpuHealthChanged
LedgerEvent = GpusClaimed | GpusReleased
AnyEvent = AnyJobEvent | ProcessorEvent | LedgerEvent | FleetEvent

EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        *AnyJobEvent.__args__,
        *ProcessorEvent.__args__,
        *LedgerEvent.__args__,
        *FleetEvent.__args__,
    )
}

#: ``(type, from_version) -> rewrite`` applied to an old payload before decoding.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
UPCASTERS: dict[tuple[str, int], Upcaster] = {}

_encoder = msgspec.json.Encoder()
_decoders: dict[str, msgspec.json.Decoder[Any]] = {
    name: msgspec.json.Decoder(cls) for name, cls in EVENT_TYPES.items()
}


def event_type(event: Event) -> str:
    return type(event).__name__


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_tagged(
    decoder: msgspec.json.Decoder[T],
    known: Collection[str],
    type_name: str,
    payload: bytes,
    kind: str,
) -> T:
    """Decode a payload of one of the event unions kept apart from the job events (access,
    webhooks): the stored type name must be known and match the payload's tag."""
    if type_name not in known:
        raise UnknownMessageType(f"unknown {kind} event type {type_name!r}")
    try:
        event = decoder.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise MessageError(f"cannot decode {type_name}: {exc}") from exc
    if type(event).__name__ != type_name:
        raise MessageError(f"payload of a {type_name} holds a {type(event).__name__}")
    return event


def decode_event(type_name: str, payload: bytes, schema_version: int = 1) -> AnyEvent:
    """Decode a stored payload, upcasting it from ``schema_version`` when needed."""
    cls = EVENT_TYPES.get(type_name)
    if cls is None:
        raise UnknownMessageType(f"unknown event type {type_name!r}")
    try:
        if schema_version < cls.schema_version:
            data = msgspec.json.decode(payload, type=dict[str, Any])
            for version in range(schema_version, cls.schema_version):
                upcast = UPCASTERS.get((type_name, version))
                if upcast is not None:
                    data = upcast(data)
            data["type"] = type_name
            result: AnyEvent = msgspec.convert(data, type=cls)  # type: ignore[assignment]
            return result
        decoded: AnyEvent = _decoders[type_name].decode(payload)
    # InvalidSpec: a JobSubmitted whose spec fails JobSpec's own checks is malformed too.
    except (msgspec.ValidationError, msgspec.DecodeError, InvalidSpec) as exc:
        raise MessageError(f"cannot decode {type_name} v{schema_version}: {exc}") from exc
    return decoded
