"""The Job aggregate: ``decide(state, command, now) -> events`` and ``evolve(state, event)``.

Both are pure. ``decide`` either refuses a command with a DomainError (and so records
nothing) or returns the events that the command causes; an empty list means "accepted, and
already so" (a second stop of a stopping job, a redelivered success). ``evolve`` never
refuses: events are facts that already happened, so it must accept every event ``decide``
can emit, in any stored order.

Statuses:
``held`` (auto_start false) → ``waiting`` (only with ``after``: for the jobs it names)
→ ``queued`` → ``scheduled`` (GPUs chosen, runner not started) → ``running``
→ ``succeeded`` | ``failed`` | ``stopping`` → ``stopped``. A lost job goes
back to ``queued`` until its retries run out. ``stopped`` and ``failed`` jobs can be
started again (they resume from their last checkpoint); ``deleted`` is final for the
history but the id may be submitted again.

Pause and cancel ride on the same stop as ``stopping``: the request records its intent,
and the runner's confirmation ends the job ``paused`` (resumable, like ``stopped``) or
``cancelled`` (final: nothing starts it again, the OpenAI API's meaning of cancel).
A preemption (``PreemptJob``) and a time limit (``TimeOutJob``) ride on it too: a preempted
job goes back to ``queued`` without spending a retry, and one that reached its
``max_runtime`` ends ``timed_out`` (resumable, like ``stopped``). See docs/preemption.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Final, Literal

import msgspec

from . import commands as c
from . import events as e
from .errors import (
    CheckpointMissing,
    InvalidSpec,
    InvalidTransition,
    JobAlreadyExists,
    JobNotFound,
    NoCheckpoint,
    StaleAssignment,
)
from .failure import DATA_ERROR, HARDWARE, OOM, RUNNER_LOST, USER_ERROR, Failure
from .gang import RankPlacement, rank_of
from .limits import MAX_REASON_CHARS
from .progress import TrainingMetrics
from .retry import GiveUp, RetryCounts, plan_retry
from .spec import JobSpec, Priority, TrainArgs, decode_spec


class JobStatus(StrEnum):
    NEW = "new"
    HELD = "held"
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    STOPPING = "stopping"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    DELETED = "deleted"
    #: Waits for the jobs named in ``spec.after`` before it is queued.
    WAITING = "waiting"


#: Statuses in which a runner owns GPUs for the job.
ACTIVE: Final = frozenset({JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.STOPPING})
#: Statuses a job rests in until a user acts.
FINISHED: Final = frozenset(
    {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.STOPPED,
        JobStatus.PAUSED,
        JobStatus.CANCELLED,
        JobStatus.TIMED_OUT,
    }
)
#: What a stop is for (``StopRequested.intent``).
STOP_INTENTS: Final = ("stop", "pause", "cancel", "preempt", "timeout", "requeue")
#: Preemption times a job keeps: enough for any hourly cap an operator sets.
PREEMPTIONS_KEPT: Final = 32


class Progress(TrainingMetrics, frozen=True, omit_defaults=True, kw_only=True):
    """The latest metrics, and when the runner reported them."""

    at: datetime | None = None


class Checkpoint(msgspec.Struct, frozen=True):
    step: int
    path: str
    attempt: int


ExportStatus = Literal["requested", "running", "succeeded", "failed"]


class Export(msgspec.Struct, frozen=True, omit_defaults=True):
    export_id: str
    checkpoint: str
    runner_id: str
    status: ExportStatus = "requested"
    artifact_path: str | None = None
    reason: str | None = None


class AttemptFailure(msgspec.Struct, frozen=True):
    """How one attempt failed."""

    attempt: int
    failure: Failure


class JobWarning(msgspec.Struct, frozen=True):
    """Something looks wrong with a running attempt."""

    attempt: int
    kind: str
    reason: str
    at: datetime


class JobState(msgspec.Struct, frozen=True, omit_defaults=True):
    job_id: str
    status: JobStatus = JobStatus.NEW
    version: int = 0
    spec: JobSpec | None = None
    priority: int = 0
    #: Counts schedulings; runner reports must name the current one.
    attempt: int = 0
    #: Losses and refused starts so far, bounded by ``spec.max_retries``.
    retries: int = 0
    runner_id: str | None = None
    gpu_ids: tuple[int, ...] = ()
    pid: int | None = None
    command: tuple[str, ...] = ()
    resume_from: str | None = None
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress | None = None
    checkpoints: tuple[Checkpoint, ...] = ()
    exports: tuple[Export, ...] = ()
    stop_reason: str | None = None
    failure_reason: str | None = None
    exit_code: int | None = None
    #: The runner that last ran the job: exports go there, where the checkpoints are.
    last_runner_id: str | None = None
    #: The intent of the stop in progress (``stop``, ``pause`` or ``cancel``).
    stop_intent: str = "stop"
    #: How often the job was preempted, and when (the latest ``PREEMPTIONS_KEPT``).
    preemptions: int = 0
    preempted_at: tuple[datetime, ...] = ()
    #: While a preemption is under way: the job taking the GPUs, and the GPUs it gets.
    preempted_by: str | None = None
    preempt_gpu_ids: tuple[int, ...] = ()
    #: When the latest checkpoint was recorded: the work a preemption would lose.
    checkpointed_at: datetime | None = None
    #: Seconds run by attempts that have ended, and when the current one started running:
    #: together the runtime that ``max_runtime`` limits.
    runtime_s: float = 0.0
    run_since: datetime | None = None
    #: UUIDs of the GPUs of the current attempt.
    gpu_uuids: tuple[str, ...] = ()
    #: The cause of the last failed attempt, as the runner classified it.
    failure: Failure | None = None
    #: Every classified failure, by attempt.
    failures: tuple[AttemptFailure, ...] = ()
    #: Training arguments a retry changed (a halved batch); None: the spec's.
    train_args: TrainArgs | None = None
    #: GPUs (by UUID) this job avoids after faults on them.
    excluded_gpus: tuple[str, ...] = ()
    #: Retries made under each rule of the spec's retry policy.
    retry_counts: RetryCounts = RetryCounts()
    #: Checkpoints gone from disk since they were saved (rotated out, or deleted).
    removed_checkpoints: tuple[Checkpoint, ...] = ()
    #: Warnings about the current attempt (``resume_stalled``, ``idle``), with reasons.
    warnings: tuple[JobWarning, ...] = ()
    #: A multi-node job's ranks past rank 0 while it holds GPUs (rank 0 is ``runner_id``).
    peers: tuple[RankPlacement, ...] = ()
    #: The ranks past rank 0 that reported their start in the current attempt.
    ranks_started: tuple[int, ...] = ()
    #: Where the ranks of the current attempt meet, as rank 0's runner published it.
    master_addr: str | None = None
    master_port: int | None = None

    #: Scores of the evaluation after training (``spec.eval``), by dataset.
    eval_results: dict[str, float] = {}
    #: Why that evaluation failed, beside a succeeded training.
    eval_error: str | None = None
    #: The model folder evaluated (a LoRA job's merged model).
    eval_model: str | None = None
    #: What the runner changed to start the current attempt (an unreachable tracker).
    start_warnings: tuple[str, ...] = ()
    #: Tracker -> the page of the job's run there; an attempt without a link keeps the last.
    tracker_urls: dict[str, str] = {}

    @property
    def gang_started(self) -> bool:
        """Every rank of the current attempt runs (always true for a one-node job)."""
        return self.status is JobStatus.RUNNING and len(self.ranks_started) == len(self.peers)

    @property
    def exists(self) -> bool:
        return self.status not in (JobStatus.NEW, JobStatus.DELETED)

    @property
    def attempt_args(self) -> TrainArgs | None:
        """The training arguments the next attempt runs with."""
        if self.train_args is not None:
            return self.train_args
        return self.spec.train_args if self.spec is not None else None

    @property
    def last_checkpoint(self) -> Checkpoint | None:
        return self.checkpoints[-1] if self.checkpoints else None

    def runtime_at(self, now: datetime) -> float:
        """Seconds run over every attempt up to ``now`` (since the last timed-out resume)."""
        running = 0.0 if self.run_since is None else (now - self.run_since).total_seconds()
        return self.runtime_s + max(0.0, running)

    @property
    def export_in_flight(self) -> Export | None:
        for export in self.exports:
            if export.status in ("requested", "running"):
                return export
        return None


def initial_state(job_id: str) -> JobState:
    return JobState(job_id=job_id)


# --- decide ---------------------------------------------------------------------------------


def _refuse(state: JobState, action: str, hint: str) -> InvalidTransition:
    return InvalidTransition(
        f"cannot {action} job {state.job_id!r} while it is {state.status}: {hint}"
    )


def _require_exists(state: JobState) -> None:
    if not state.exists:
        raise JobNotFound(f"job {state.job_id!r} does not exist")


def _require_attempt(state: JobState, report: c.RunnerReport) -> None:
    # A queued job has no live attempt: its last one was lost, rejected or has ended, so a
    # runner still reporting on it (back after its lease expired) must stop its process.
    if (
        report.attempt != state.attempt
        or state.status is JobStatus.QUEUED
        or (
            state.runner_id is not None
            and rank_of(report.runner_id, state.runner_id, state.peers) is None
        )
    ):
        where = f"on {state.runner_id!r}" if state.runner_id is not None else str(state.status)
        raise StaleAssignment(
            f"report from runner {report.runner_id!r} for attempt {report.attempt} of job "
            f"{state.job_id!r}, whose current attempt is {state.attempt} ({where}): "
            "the process should be stopped",
        )


def decide(  # noqa: C901 - one case per command reads best as a table
    state: JobState, command: c.AnyJobCommand, now: datetime
) -> list[e.AnyJobEvent]:
    """Refuse ``command`` with a DomainError, or return the events it causes."""
    if isinstance(command, c.SubmitJob):
        return _decide_submit(state, command, now)
    _require_exists(state)
    match command:
        case c.StartJob():
            return _decide_start(state, now)
        case c.StopJob(reason=reason):
            return _decide_stop(state, reason, now)
        case c.PauseJob(reason=reason):
            return _decide_pause(state, reason, now)
        case c.ResumeJob():
            return _decide_resume(state, now)
        case c.CancelJob(reason=reason):
            return _decide_cancel(state, reason, now)
        case c.ChangePriority(priority=priority):
            return _decide_priority(state, priority, now)
        case c.ReleaseWaitingJob(reason=reason):
            return _decide_release_waiting(state, reason, now)
        case c.DeleteJob():
            if state.status in ACTIVE:
                raise _refuse(state, "delete", "stop it first and delete it once it has stopped")
            return [e.JobDeleted(at=now, job_id=state.job_id)]
        case c.RequestExport():
            return _decide_export(state, command, now)
        case c.RequeueJob(reason=reason):
            return _decide_requeue(state, reason, now)
        case c.FlagJob():
            return _decide_flag(state, command, now)
        case c.ScheduleJob():
            return _decide_schedule(state, command, now)
        case c.MarkLost():
            return _decide_lost(state, command, now)
        case c.PreemptJob():
            return _decide_preempt(state, command, now)
        case c.TimeOutJob():
            return _decide_time_out(state, command, now)
        case c.RejectAssignment():
            return _decide_reject(state, command, now)
        case (
            c.ReportStarted()
            | c.ReportProgress()
            | c.ReportCheckpoint()
            | c.ReportCheckpointsRemoved()
            | c.ReportSucceeded()
            | c.ReportFailed()
            | c.ReportStopped()
        ):
            if state.peers and command.runner_id != state.runner_id:
                _require_attempt(state, command)
                return _decide_rank_report(state, command, now)
            if state.peers and isinstance(command, c.ReportFailed):
                _require_attempt(state, command)
                return _decide_rank_report(state, command, now)
            return _decide_report(state, command, now)
        case c.ReportRendezvous():
            return _decide_rendezvous(state, command, now)
        case c.ReportExportStarted() | c.ReportExportSucceeded() | c.ReportExportFailed():
            return _decide_export_report(state, command, now)
    raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover


def _decide_submit(state: JobState, command: c.SubmitJob, now: datetime) -> list[e.AnyJobEvent]:
    if state.exists:
        raise JobAlreadyExists(
            f"a job with id {state.job_id!r} already exists; choose another id or delete it first",
        )
    job_id, spec = state.job_id, command.spec
    try:  # msgspec checks constraints only when decoding: a spec built in code skipped them
        decode_spec(msgspec.to_builtins(spec))
    except InvalidSpec as exc:
        raise InvalidSpec(
            f"invalid spec for job {job_id!r}: {exc.message}; fix it and submit again",
        ) from exc
    if any(condition.job == job_id for condition in spec.after):
        raise InvalidSpec(f"job {job_id!r} cannot wait for itself: remove it from after")
    submitted = e.JobSubmitted(at=now, job_id=job_id, spec=spec)
    if not spec.auto_start:
        return [submitted, e.JobHeld(at=now, job_id=job_id)]
    if spec.after:
        return [submitted, e.JobWaiting(at=now, job_id=job_id)]
    return [submitted, e.JobQueued(at=now, job_id=job_id, priority=spec.priority)]


def _decide_release_waiting(state: JobState, reason: str, now: datetime) -> list[e.AnyJobEvent]:
    """Queue a waiting job; anything else already left the wait (a no-op, not a refusal)."""
    if state.status is not JobStatus.WAITING:
        return []
    return [e.JobQueued(at=now, job_id=state.job_id, priority=state.priority, reason=reason)]


def _decide_start(state: JobState, now: datetime) -> list[e.AnyJobEvent]:
    job_id = state.job_id
    match state.status:
        case JobStatus.HELD if state.spec is not None and state.spec.after:
            return [e.JobReleased(at=now, job_id=job_id), e.JobWaiting(at=now, job_id=job_id)]
        case JobStatus.HELD:
            return [
                e.JobReleased(at=now, job_id=job_id),
                e.JobQueued(at=now, job_id=job_id, priority=state.priority, reason="released"),
            ]
        case JobStatus.QUEUED | JobStatus.SCHEDULED | JobStatus.RUNNING | JobStatus.WAITING:
            return []
        case JobStatus.STOPPED | JobStatus.PAUSED if (
            state.attempt == 0 and state.spec is not None and state.spec.after
        ):
            # Stopped while it waited: it waits again, its conditions still apply.
            return [e.JobWaiting(at=now, job_id=job_id)]
        case JobStatus.STOPPED | JobStatus.FAILED | JobStatus.PAUSED | JobStatus.TIMED_OUT:
            checkpoint = state.last_checkpoint
            return [
                e.JobQueued(
                    at=now,
                    job_id=job_id,
                    priority=state.priority,
                    reason="resumed",
                    resume_from=checkpoint.path if checkpoint else None,
                ),
            ]
        case JobStatus.SUCCEEDED:
            raise _refuse(state, "start", "it has finished; submit a new job to train again")
        case JobStatus.CANCELLED:
            raise _refuse(state, "start", "a cancelled job is final; submit a new job")
        case _:
            raise _refuse(state, "start", "wait until it has stopped, then start it again")


def _decide_stop(state: JobState, reason: str, now: datetime) -> list[e.AnyJobEvent]:
    job_id = state.job_id
    match state.status:
        case JobStatus.HELD | JobStatus.QUEUED | JobStatus.WAITING:
            return [e.JobStopped(at=now, job_id=job_id, reason=reason, attempt=state.attempt)]
        case JobStatus.SCHEDULED | JobStatus.RUNNING:
            return [
                e.StopRequested(
                    at=now,
                    job_id=job_id,
                    reason=reason,
                    runner_id=state.runner_id,
                    attempt=state.attempt,
                ),
                *_rank_stops(state, reason, "stop", now),
            ]
        case JobStatus.STOPPING if state.stop_intent in ("preempt", "timeout"):
            # The user's stop wins: the job ends stopped, not back in the queue.
            return [_stop_request(state, reason, "stop", now)]
        case JobStatus.STOPPING:
            return []
        case _:
            raise _refuse(state, "stop", "it is no longer running")


def _stop_ended(
    state: JobState, intent: str, reason: str, now: datetime, checkpoint: str | None
) -> list[e.AnyJobEvent]:
    """The fact that ends a stop, by what the stop was for."""
    job_id, attempt = state.job_id, state.attempt
    requeued = e.JobRequeued(
        at=now,
        job_id=job_id,
        priority=state.priority,
        retries=state.retries,
        reason=reason,
        resume_from=checkpoint or state.resume_from,
    )
    if intent == "preempt":
        return [
            e.JobPreempted(
                at=now,
                job_id=job_id,
                reason=reason,
                attempt=attempt,
                preempted_by=state.preempted_by,
                checkpoint=checkpoint,
            ),
            requeued,
        ]
    if intent == "requeue":
        return [requeued]
    if intent == "timeout":
        return [
            e.JobTimedOut(
                at=now, job_id=job_id, reason=reason, attempt=attempt, checkpoint=checkpoint
            )
        ]
    if intent == "pause":
        return [
            e.JobPaused(
                at=now, job_id=job_id, reason=reason, attempt=attempt, checkpoint=checkpoint
            )
        ]
    if intent == "cancel":
        return [
            e.JobCancelled(
                at=now, job_id=job_id, reason=reason, attempt=attempt, checkpoint=checkpoint
            )
        ]
    return [
        e.JobStopped(at=now, job_id=job_id, reason=reason, attempt=attempt, checkpoint=checkpoint)
    ]


def _stop_request(state: JobState, reason: str, intent: str, now: datetime) -> e.StopRequested:
    return e.StopRequested(
        at=now,
        job_id=state.job_id,
        reason=reason,
        runner_id=state.runner_id,
        attempt=state.attempt,
        intent=intent,
    )


def _decide_pause(state: JobState, reason: str, now: datetime) -> list[e.AnyJobEvent]:
    checkpoint = state.last_checkpoint
    match state.status:
        case JobStatus.HELD | JobStatus.QUEUED | JobStatus.WAITING:
            path = checkpoint.path if checkpoint else None
            return _stop_ended(state, "pause", reason, now, path)
        case JobStatus.SCHEDULED | JobStatus.RUNNING:
            return [
                _stop_request(state, reason, "pause", now),
                *_rank_stops(state, reason, "pause", now),
            ]
        case JobStatus.PAUSED:
            return []
        case JobStatus.STOPPING if state.stop_intent == "pause":
            return []
        case JobStatus.STOPPING if state.stop_intent in ("preempt", "timeout"):
            return [_stop_request(state, reason, "pause", now)]
        case JobStatus.STOPPING:
            raise _refuse(state, "pause", f"a {state.stop_intent} is already in progress")
        case _:
            raise _refuse(state, "pause", "only queued or running jobs can be paused")


def _decide_requeue(state: JobState, reason: str, now: datetime) -> list[e.AnyJobEvent]:
    """Stop with a checkpoint and queue again: the graceful path with intent ``requeue``."""
    match state.status:
        case JobStatus.SCHEDULED | JobStatus.RUNNING:
            return [_stop_request(state, reason, "requeue", now)]
        case JobStatus.STOPPING | JobStatus.QUEUED | JobStatus.HELD:
            return []
        case _:
            raise _refuse(state, "requeue", "it is not running")


def _decide_flag(state: JobState, command: c.FlagJob, now: datetime) -> list[e.AnyJobEvent]:
    """Warn once per attempt and kind, while the attempt is the current one."""
    if command.attempt != state.attempt or state.status not in ACTIVE:
        return []
    if any(w.attempt == command.attempt and w.kind == command.warning for w in state.warnings):
        return []
    return [
        e.JobWarned(
            at=now,
            job_id=state.job_id,
            attempt=command.attempt,
            warning=command.warning,
            reason=command.reason,
        )
    ]


def _decide_resume(state: JobState, now: datetime) -> list[e.AnyJobEvent]:
    if state.status not in (JobStatus.PAUSED, JobStatus.STOPPED, JobStatus.TIMED_OUT):
        raise _refuse(state, "resume", "only paused, stopped or timed-out jobs can be resumed")
    return _decide_start(state, now)


def _decide_cancel(state: JobState, reason: str, now: datetime) -> list[e.AnyJobEvent]:
    checkpoint = state.last_checkpoint
    path = checkpoint.path if checkpoint else None
    match state.status:
        case (
            JobStatus.HELD
            | JobStatus.QUEUED
            | JobStatus.PAUSED
            | JobStatus.STOPPED
            | JobStatus.WAITING
            | JobStatus.TIMED_OUT
        ):
            return _stop_ended(state, "cancel", reason, now, path)
        case JobStatus.SCHEDULED | JobStatus.RUNNING:
            return [
                _stop_request(state, reason, "cancel", now),
                *_rank_stops(state, reason, "cancel", now),
            ]
        case JobStatus.STOPPING if state.stop_intent != "cancel":
            # The stop under way becomes a cancel: its confirmation ends the job for good.
            return [
                _stop_request(state, reason, "cancel", now),
                *_rank_stops(state, reason, "cancel", now),
            ]
        case JobStatus.STOPPING | JobStatus.CANCELLED:
            return []
        case _:
            raise _refuse(state, "cancel", "it has already finished")


def _decide_preempt(state: JobState, command: c.PreemptJob, now: datetime) -> list[e.AnyJobEvent]:
    """The scheduler's choice of a victim, checked against the stored state."""
    assert state.spec is not None
    if state.status is JobStatus.STOPPING and state.stop_intent == "preempt":
        return []
    if state.status is not JobStatus.RUNNING or command.attempt != state.attempt:
        raise _refuse(state, "preempt", f"only its running attempt {state.attempt} can be")
    if not state.spec.preemptible:
        raise _refuse(state, "preempt", "its spec says preemptible: false")
    return [
        e.StopRequested(
            at=now,
            job_id=state.job_id,
            reason=command.reason,
            runner_id=state.runner_id,
            attempt=state.attempt,
            intent="preempt",
            grace_s=command.grace_s,
            preempted_by=command.preempted_by,
            reserved_gpu_ids=command.reserved_gpu_ids,
        )
    ]


def _decide_time_out(state: JobState, command: c.TimeOutJob, now: datetime) -> list[e.AnyJobEvent]:
    """Stop a job at its ``max_runtime``, with a checkpoint; it ends ``timed_out``."""
    if command.attempt != state.attempt:
        raise StaleAssignment(
            f"time limit for attempt {command.attempt} of job {state.job_id!r}, whose current "
            f"attempt is {state.attempt}"
        )
    match state.status:
        case JobStatus.SCHEDULED | JobStatus.RUNNING:
            return [_stop_request(state, command.reason, "timeout", now)]
        case JobStatus.STOPPING if state.stop_intent in ("timeout", "cancel"):
            return []
        case JobStatus.STOPPING:
            # A preemption or a stop under way ends in the time limit instead.
            return [_stop_request(state, command.reason, "timeout", now)]
        case _:
            raise _refuse(state, "time out", "it is not running")


def _decide_priority(state: JobState, priority: int, now: datetime) -> list[e.AnyJobEvent]:
    try:  # a command built in code skipped msgspec's range check
        msgspec.convert(priority, type=Priority)
    except msgspec.ValidationError:
        raise InvalidSpec(
            f"priority {priority!r} for job {state.job_id!r} is out of range: use 0-10",
        ) from None
    if state.status not in (JobStatus.HELD, JobStatus.QUEUED, JobStatus.WAITING):
        raise _refuse(
            state, "change the priority of", "only held, waiting or queued jobs can be reordered"
        )
    if priority == state.priority:
        return []
    return [
        e.JobPriorityChanged(
            at=now,
            job_id=state.job_id,
            old_priority=state.priority,
            new_priority=priority,
        ),
    ]


def _decide_export(state: JobState, command: c.RequestExport, now: datetime) -> list[e.AnyJobEvent]:
    if state.status not in FINISHED:
        raise _refuse(state, "export", "export once training has finished or been stopped")
    assert state.spec is not None
    if state.spec.effective_args.train_type != "lora":
        raise _refuse(state, "export", "a full fine-tune has no LoRA adapter to merge")
    if not state.checkpoints:
        raise NoCheckpoint(f"job {state.job_id!r} has no checkpoint to export yet")
    if command.checkpoint is None:
        checkpoint = state.checkpoints[-1].path
    else:
        known = {cp.path for cp in state.checkpoints}
        by_name = {cp.path.rstrip("/").rsplit("/", 1)[-1]: cp.path for cp in state.checkpoints}
        if command.checkpoint in known:
            checkpoint = command.checkpoint
        elif command.checkpoint in by_name:
            checkpoint = by_name[command.checkpoint]
        elif any(
            command.checkpoint in (cp.path, cp.path.rstrip("/").rsplit("/", 1)[-1])
            for cp in state.removed_checkpoints
        ):
            raise CheckpointMissing(
                f"checkpoint {command.checkpoint!r} of job {state.job_id!r} is no longer on "
                f"disk; choose one of {sorted(by_name)}",
            )
        else:
            raise NoCheckpoint(
                f"job {state.job_id!r} has no checkpoint {command.checkpoint!r}; "
                f"known: {sorted(by_name)}",
            )
    in_flight = state.export_in_flight
    if in_flight is not None:
        raise _refuse(state, "export", f"export {in_flight.export_id} is still in progress")
    done = [x for x in state.exports if x.checkpoint == checkpoint and x.status == "succeeded"]
    if done and not command.overwrite:
        return []
    runner_id = state.last_runner_id
    assert runner_id is not None, "a job with checkpoints has run on a runner"
    export_id = f"{state.job_id}-export-{len(state.exports) + 1}"
    return [
        e.ExportRequested(
            at=now,
            job_id=state.job_id,
            export_id=export_id,
            checkpoint=checkpoint,
            runner_id=runner_id,
            overwrite=command.overwrite,
        ),
    ]


def _decide_schedule(state: JobState, command: c.ScheduleJob, now: datetime) -> list[e.AnyJobEvent]:
    if state.status is not JobStatus.QUEUED:
        raise _refuse(state, "schedule", "only queued jobs can be placed")
    if command.attempt != state.attempt + 1:
        raise StaleAssignment(
            f"placement for attempt {command.attempt} of job {state.job_id!r}, "
            f"expected attempt {state.attempt + 1}",
        )
    assert state.spec is not None
    if len(command.gpu_ids) != state.spec.gpu_count or len(set(command.gpu_ids)) != len(
        command.gpu_ids,
    ):
        raise _refuse(
            state,
            "schedule",
            f"it needs {state.spec.gpu_count} distinct GPUs, got {list(command.gpu_ids)}",
        )
    _check_ranks(state, state.spec, command)
    return [
        e.JobScheduled(
            at=now,
            job_id=state.job_id,
            attempt=command.attempt,
            runner_id=command.runner_id,
            gpu_ids=command.gpu_ids,
            gpu_uuids=command.gpu_uuids,
            resume_from=state.resume_from,
            train_args=state.train_args,
            peers=command.peers,
        ),
    ]


def _check_ranks(state: JobState, spec: JobSpec, command: c.ScheduleJob) -> None:
    """A placement names every rank once, each on its own runner with its share of GPUs."""
    peers = command.peers
    runners = {command.runner_id, *(peer.runner_id for peer in peers)}
    problem = None
    if len(peers) != spec.nodes - 1:
        problem = f"it spans {spec.nodes} runners, got {len(peers) + 1}"
    elif len(runners) != spec.nodes:
        problem = "each rank needs its own runner"
    elif [peer.rank for peer in peers] != list(range(1, spec.nodes)):
        problem = f"ranks must be numbered 1 to {spec.nodes - 1}"
    elif any(
        len(peer.gpu_ids) != spec.gpu_count or len(set(peer.gpu_ids)) != spec.gpu_count
        for peer in peers
    ):
        problem = f"every rank needs {spec.gpu_count} distinct GPUs"
    if problem is not None:
        raise _refuse(state, "schedule", problem)


def _rank_stops(state: JobState, reason: str, intent: str, now: datetime) -> list[e.AnyJobEvent]:
    """Stop requests for a multi-node job's ranks past rank 0, one per runner."""
    return [
        e.StopRequested(
            at=now,
            job_id=state.job_id,
            reason=reason,
            runner_id=peer.runner_id,
            attempt=state.attempt,
            intent=intent,
        )
        for peer in state.peers
    ]


def _gang_stops(
    state: JobState, reason: str, now: datetime, *, but: str | None = None
) -> list[e.AnyJobEvent]:
    """Stop every rank of a multi-node job (but the one on ``but``), before a requeue."""
    runners = [state.runner_id, *(peer.runner_id for peer in state.peers)]
    return [
        e.StopRequested(
            at=now,
            job_id=state.job_id,
            reason=reason,
            runner_id=runner_id,
            attempt=state.attempt,
            intent="requeue",
        )
        for runner_id in runners
        if runner_id is not None and runner_id != but
    ]


def _decide_rendezvous(
    state: JobState, command: c.ReportRendezvous, now: datetime
) -> list[e.AnyJobEvent]:
    """Rank 0 has chosen where the ranks meet: start every other rank there."""
    _require_attempt(state, command)
    if command.runner_id != state.runner_id:
        raise _refuse(state, "record a rendezvous for", "only rank 0's runner publishes it")
    if state.master_addr is not None or state.status not in (
        JobStatus.SCHEDULED,
        JobStatus.RUNNING,
    ):
        return []
    return [
        e.RankStartRequested(
            at=now,
            job_id=state.job_id,
            attempt=state.attempt,
            rank=peer.rank,
            runner_id=peer.runner_id,
            gpu_ids=peer.gpu_ids,
            gpu_uuids=peer.gpu_uuids,
            master_addr=command.master_addr,
            master_port=command.master_port,
            resume_from=state.resume_from,
            train_args=state.train_args,
        )
        for peer in state.peers
    ]


#: Failures of a multi-node rank that are the job's own, not a peer's: the retry policy
#: decides them. Any other failure of a rank requeues the job as a lost attempt.
_GANG_POLICY_KINDS: Final = frozenset({OOM, USER_ERROR, DATA_ERROR})


def _decide_rank_report(
    state: JobState,
    command: c.ReportStarted
    | c.ReportProgress
    | c.ReportCheckpoint
    | c.ReportCheckpointsRemoved
    | c.ReportSucceeded
    | c.ReportFailed
    | c.ReportStopped,
    now: datetime,
) -> list[e.AnyJobEvent]:
    """A multi-node job's report: only rank 0 speaks for the job, but one rank's failure
    stops every rank and requeues the job as one."""
    rank = rank_of(command.runner_id, state.runner_id, state.peers)
    assert rank is not None
    match command:
        case c.ReportStarted(pid=pid):
            live = state.status in (JobStatus.SCHEDULED, JobStatus.RUNNING)
            if not live or rank in state.ranks_started:
                return []
            return [
                e.RankStarted(
                    at=now,
                    job_id=state.job_id,
                    attempt=state.attempt,
                    rank=rank,
                    runner_id=command.runner_id,
                    pid=pid,
                )
            ]
        case c.ReportFailed(exit_code=exit_code, reason=reason):
            if state.status not in (JobStatus.SCHEDULED, JobStatus.RUNNING):
                return []  # a rank ending while the job stops is part of the stop
            why = f"rank {rank} on {command.runner_id} failed (exit code {exit_code}): {reason}"
            stops = _gang_stops(state, why[:MAX_REASON_CHARS], now, but=command.runner_id)
            if command.failure is not None and command.failure.kind in _GANG_POLICY_KINDS:
                # The job's own fault follows the retry policy as on one node (a halved
                # batch, no retry of a data error), for every rank at once. A rank's NCCL
                # or unknown failure is most often a peer gone: the attempt is lost.
                failed = e.JobFailed(
                    at=now,
                    job_id=state.job_id,
                    attempt=state.attempt,
                    exit_code=exit_code,
                    reason=why[:MAX_REASON_CHARS],
                    stderr_tail=command.stderr_tail,
                    failure=command.failure,
                )
                return [*stops, *_retry_or_fail(state, failed, command.failure, now)]
            lost = e.JobLost(
                at=now,
                job_id=state.job_id,
                attempt=state.attempt,
                runner_id=command.runner_id,
                reason=why[:MAX_REASON_CHARS],
            )
            return [
                *stops,
                lost,
                *_requeue_or_fail(state, why[:MAX_REASON_CHARS], now, count_retry=True),
            ]
    return []  # progress, checkpoints and outcomes come from rank 0


def _requeue_or_fail(
    state: JobState,
    reason: str,
    now: datetime,
    *,
    count_retry: bool,
    failure: Failure | None = None,
) -> list[e.AnyJobEvent]:
    assert state.spec is not None
    retries = state.retries + 1 if count_retry else state.retries
    if retries > state.spec.max_retries:
        return [
            e.JobFailed(
                at=now,
                job_id=state.job_id,
                attempt=state.attempt,
                exit_code=None,
                reason=f"{reason}; gave up after {state.spec.max_retries} retries",
                failure=failure,
            ),
        ]
    checkpoint = state.last_checkpoint
    return [
        e.JobRequeued(
            at=now,
            job_id=state.job_id,
            priority=state.priority,
            retries=retries,
            reason=reason,
            resume_from=checkpoint.path if checkpoint else state.resume_from,
            failure=failure,
        ),
    ]


def _decide_lost(state: JobState, command: c.MarkLost, now: datetime) -> list[e.AnyJobEvent]:
    if state.status not in ACTIVE or command.attempt != state.attempt:
        return []  # already dealt with: the job moved on since the loss was noticed
    assert state.runner_id is not None
    lost = e.JobLost(
        at=now,
        job_id=state.job_id,
        attempt=state.attempt,
        runner_id=state.runner_id,
        reason=command.reason,
    )
    if state.peers and state.status is not JobStatus.STOPPING:
        # One rank is gone: the others must not train on alone.
        stops = _gang_stops(state, f"lost: {command.reason}", now)
        requeue = _requeue_or_fail(state, f"lost: {command.reason}", now, count_retry=True)
        return [*stops, lost, *requeue]
    if state.status is JobStatus.STOPPING:
        checkpoint = state.last_checkpoint
        return [
            lost,
            *_stop_ended(
                state,
                state.stop_intent,
                state.stop_reason or "stopped by user",
                now,
                checkpoint.path if checkpoint else None,
            ),
        ]
    failure = Failure(kind=RUNNER_LOST, detail=command.reason)
    return [
        lost,
        *_requeue_or_fail(state, f"lost: {command.reason}", now, count_retry=True, failure=failure),
    ]


def _decide_reject(
    state: JobState,
    command: c.RejectAssignment,
    now: datetime,
) -> list[e.AnyJobEvent]:
    gang_rank = state.peers and command.runner_id != state.runner_id
    if state.status is not JobStatus.SCHEDULED and not (
        gang_rank and state.status is JobStatus.RUNNING
    ):
        raise _refuse(state, "reject the assignment of", "only a job that has not started can be")
    _require_attempt(state, command)
    rejected = e.AssignmentRejected(
        at=now,
        job_id=state.job_id,
        attempt=command.attempt,
        runner_id=command.runner_id,
        reason=command.reason,
    )
    return [
        *_gang_stops(state, f"rank refused: {command.reason}", now, but=command.runner_id),
        rejected,
        *_requeue_or_fail(state, f"rejected: {command.reason}", now, count_retry=True),
    ]


def _decide_report(  # noqa: C901 - one branch per report kind reads best as a table
    state: JobState,
    command: c.ReportStarted
    | c.ReportProgress
    | c.ReportCheckpoint
    | c.ReportCheckpointsRemoved
    | c.ReportSucceeded
    | c.ReportFailed
    | c.ReportStopped,
    now: datetime,
) -> list[e.AnyJobEvent]:
    _require_attempt(state, command)
    job_id, attempt = state.job_id, command.attempt
    live = state.status in (JobStatus.RUNNING, JobStatus.STOPPING)
    match command:
        case c.ReportStarted(pid=pid, command=argv):
            if state.status is JobStatus.SCHEDULED:
                return [
                    e.JobStarted(
                        at=now,
                        job_id=job_id,
                        attempt=attempt,
                        runner_id=command.runner_id,
                        pid=pid,
                        command=argv,
                        warnings=command.warnings,
                        tracker_urls=dict(command.tracker_urls),
                    ),
                ]
            if live:
                return []
        case c.ReportProgress():
            if live:
                fields = msgspec.structs.asdict(command)
                for key in ("type", "job_id", "runner_id", "attempt"):
                    fields.pop(key, None)
                return [e.JobProgressed(at=now, job_id=job_id, attempt=attempt, **fields)]
        case c.ReportCheckpoint(step=step, path=path):
            # A finished job no longer names its runner, so fence late checkpoints by the
            # runner that ran it: a job that never started on this runner has none.
            if live or (state.status in FINISHED and command.runner_id == state.last_runner_id):
                if any(cp.path == path for cp in state.checkpoints):
                    return []
                return [
                    e.CheckpointSaved(at=now, job_id=job_id, attempt=attempt, step=step, path=path)
                ]
        case c.ReportCheckpointsRemoved(paths=paths, reason=reason):
            known = {cp.path for cp in state.checkpoints}
            return [
                e.CheckpointRemoved(
                    at=now, job_id=job_id, attempt=attempt, path=path, reason=reason
                )
                for path in paths
                if path in known
            ]
        case c.ReportSucceeded():
            if state.status is JobStatus.SUCCEEDED:
                return []
            if live:
                succeeded = e.JobSucceeded(
                    at=now,
                    job_id=job_id,
                    attempt=attempt,
                    final_step=command.final_step,
                    output_path=command.output_path,
                    eval_results=command.eval_results,
                    eval_error=command.eval_error,
                    eval_model=command.eval_model,
                )
                return [succeeded, *_auto_export(state, command.output_path, now)]
        case c.ReportFailed():
            if state.status is JobStatus.FAILED:
                return []
            if live or state.status is JobStatus.SCHEDULED:
                failed = e.JobFailed(
                    at=now,
                    job_id=job_id,
                    attempt=attempt,
                    exit_code=command.exit_code,
                    reason=command.reason,
                    stderr_tail=command.stderr_tail,
                    failure=command.failure,
                )
                if state.status is JobStatus.STOPPING and state.stop_intent == "cancel":
                    # Cancel is final even when the process failed on its way out.
                    latest = state.last_checkpoint
                    kept = latest.path if latest else None
                    return [failed, *_stop_ended(state, "cancel", command.reason, now, kept)]
                if state.status is JobStatus.STOPPING and state.stop_intent in (
                    "preempt",
                    "timeout",
                    "requeue",
                ):
                    # Killed at the end of its grace: the stop still ends as it was meant to.
                    latest = state.last_checkpoint
                    kept = latest.path if latest else None
                    reason = state.stop_reason or command.reason
                    return _stop_ended(state, state.stop_intent, reason, now, kept)
                if state.status is JobStatus.STOPPING or command.failure is None:
                    return [failed]
                return _retry_or_fail(state, failed, command.failure, now)
        case c.ReportStopped(checkpoint=checkpoint):
            if state.status in (
                JobStatus.STOPPED,
                JobStatus.PAUSED,
                JobStatus.CANCELLED,
                JobStatus.TIMED_OUT,
            ):
                return []
            if state.status is JobStatus.STOPPING or (
                state.status in (JobStatus.RUNNING, JobStatus.SCHEDULED)
            ):
                last = state.last_checkpoint
                intent = state.stop_intent if state.status is JobStatus.STOPPING else "stop"
                return _stop_ended(
                    state,
                    intent,
                    state.stop_reason or "stopped on the runner",
                    now,
                    checkpoint or (last.path if last else None),
                )
    raise _refuse(state, f"record {type(command).__name__} for", "the report does not fit")


def _retry_or_fail(
    state: JobState, failed: e.JobFailed, failure: Failure, now: datetime
) -> list[e.AnyJobEvent]:
    """Apply the spec's retry policy to a classified failure."""
    assert state.spec is not None
    plan = plan_retry(
        failure,
        state.spec.retry,
        args=state.attempt_args or TrainArgs(),
        counts=state.retry_counts,
        attempt_gpus=state.gpu_uuids,
    )
    if isinstance(plan, GiveUp):
        reason = f"{failed.reason}; {plan.reason}"
        return [msgspec.structs.replace(failed, reason=reason)]
    checkpoint = state.last_checkpoint
    return [
        e.JobRequeued(
            at=now,
            job_id=state.job_id,
            priority=state.priority,
            retries=state.retries,
            reason=plan.reason,
            resume_from=checkpoint.path if checkpoint else state.resume_from,
            failure=failure,
            train_args=plan.train_args,
            excluded_gpus=plan.excluded_gpus,
        )
    ]


def _auto_export(state: JobState, output_path: str | None, now: datetime) -> list[e.AnyJobEvent]:
    """Merge the final checkpoint's adapter right after success, when the spec asks for it.

    The runner names the final checkpoint in ``output_path``; it may not have been reported
    as a checkpoint yet, so it wins over the last recorded one.
    """
    assert state.spec is not None
    if not state.spec.auto_export or state.spec.effective_args.train_type != "lora":
        return []
    runner_id = state.runner_id or state.last_runner_id
    if runner_id is None:  # pragma: no cover - a live job always has its runner
        return []
    final = output_path.rstrip("/").rsplit("/", 1)[-1] if output_path else ""
    saved: list[e.AnyJobEvent] = []
    if output_path and final.startswith("checkpoint-"):
        checkpoint = output_path
        if all(cp.path != output_path for cp in state.checkpoints):
            # Recorded first, so the export names a checkpoint the job knows.
            step = final.removeprefix("checkpoint-")
            saved.append(
                e.CheckpointSaved(
                    at=now,
                    job_id=state.job_id,
                    attempt=state.attempt,
                    step=int(step) if step.isdigit() else 0,
                    path=output_path,
                )
            )
    elif state.checkpoints:
        checkpoint = state.checkpoints[-1].path
    else:
        return []
    return [
        *saved,
        e.ExportRequested(
            at=now,
            job_id=state.job_id,
            export_id=f"{state.job_id}-export-{len(state.exports) + 1}",
            checkpoint=checkpoint,
            runner_id=runner_id,
        ),
    ]


def _decide_export_report(
    state: JobState,
    command: c.ReportExportStarted | c.ReportExportSucceeded | c.ReportExportFailed,
    now: datetime,
) -> list[e.AnyJobEvent]:
    export = next((x for x in state.exports if x.export_id == command.export_id), None)
    if export is None:
        raise _refuse(state, "record export progress for", f"no export {command.export_id!r}")
    job_id, export_id = state.job_id, command.export_id
    match command:
        case c.ReportExportStarted(pid=pid, command=argv):
            if export.status == "requested":
                return [
                    e.ExportStarted(
                        at=now,
                        job_id=job_id,
                        export_id=export_id,
                        runner_id=command.runner_id,
                        pid=pid,
                        command=argv,
                    ),
                ]
            if export.status == "running":
                return []
        case c.ReportExportSucceeded(artifact_path=path):
            if export.status == "succeeded":
                return []
            if export.status in ("requested", "running"):
                return [
                    e.ExportSucceeded(
                        at=now, job_id=job_id, export_id=export_id, artifact_path=path
                    )
                ]
        case c.ReportExportFailed():
            if export.status == "failed":
                return []
            if export.status in ("requested", "running"):
                return [
                    e.ExportFailed(
                        at=now,
                        job_id=job_id,
                        export_id=export_id,
                        exit_code=command.exit_code,
                        reason=command.reason,
                    ),
                ]
    raise _refuse(state, "record export progress for", f"export {export_id} is {export.status}")


# --- evolve ---------------------------------------------------------------------------------


def _replace_export(state: JobState, export_id: str, **changes: object) -> tuple[Export, ...]:
    return tuple(
        msgspec.structs.replace(x, **changes) if x.export_id == export_id else x
        for x in state.exports
    )


def _ended(state: JobState, status: JobStatus, at: datetime, reason: str) -> JobState:
    return msgspec.structs.replace(
        state,
        status=status,
        finished_at=at,
        stop_reason=reason,
        stop_intent="stop",
        preempted_by=None,
        preempt_gpu_ids=(),
        runner_id=None,
        gpu_ids=(),
        peers=(),
    )


#: Events after which the job runs no attempt: its runtime so far is banked.
_ATTEMPT_ENDS: Final = (
    e.JobSucceeded,
    e.JobFailed,
    e.JobStopped,
    e.JobPaused,
    e.JobCancelled,
    e.JobLost,
    e.JobPreempted,
    e.JobTimedOut,
    e.JobRequeued,
)


def _with_failure(state: JobState, attempt: int, failure: Failure | None) -> JobState:
    if failure is None:
        return state
    failures = (*state.failures, AttemptFailure(attempt=attempt, failure=failure))
    return msgspec.structs.replace(state, failure=failure, failures=failures)


def _after_retry(state: JobState, event: e.JobRequeued) -> JobState:
    """What a retry after a classified failure changes: args, avoided GPUs, counts."""
    failure = event.failure
    if failure is None:
        return state
    state = _with_failure(state, state.attempt, failure)
    counts = state.retry_counts
    if failure.kind == OOM:
        counts = msgspec.structs.replace(counts, oom=counts.oom + 1)
    elif failure.kind in HARDWARE:
        counts = msgspec.structs.replace(counts, gpu=counts.gpu + 1)
    if event.train_args is not None:
        state = msgspec.structs.replace(state, train_args=event.train_args)
    new = tuple(g for g in event.excluded_gpus if g not in state.excluded_gpus)
    excluded = (*state.excluded_gpus, *new)
    return msgspec.structs.replace(state, retry_counts=counts, excluded_gpus=excluded)


def evolve(state: JobState, event: e.AnyJobEvent) -> JobState:
    """Apply one recorded fact; total over every event ``decide`` emits."""
    if state.run_since is not None and isinstance(event, _ATTEMPT_ENDS):
        ran = max(0.0, (event.at - state.run_since).total_seconds())
        state = msgspec.structs.replace(state, runtime_s=state.runtime_s + ran, run_since=None)
    return _evolve(state, event)


def _evolve(state: JobState, event: e.AnyJobEvent) -> JobState:  # noqa: C901, PLR0915 - a table
    s = msgspec.structs.replace
    state = s(state, version=state.version + 1)
    match event:
        case e.JobSubmitted(spec=spec, at=at):
            return JobState(
                job_id=state.job_id,
                version=state.version,
                status=JobStatus.NEW,
                spec=spec,
                priority=spec.priority,
                submitted_at=at,
            )
        case e.JobHeld():
            return s(state, status=JobStatus.HELD)
        case e.JobWaiting():
            return s(state, status=JobStatus.WAITING, finished_at=None)
        case e.JobReleased():
            return state
        case e.JobQueued(priority=priority, reason=reason, resume_from=resume_from):
            if reason == "resumed":
                if state.status is JobStatus.TIMED_OUT:  # a fresh max_runtime from here
                    state = s(state, runtime_s=0.0)
                state = s(
                    state,
                    retries=0,
                    stop_reason=None,
                    failure_reason=None,
                    exit_code=None,
                    failure=None,
                    retry_counts=RetryCounts(),
                )
            return s(
                state,
                status=JobStatus.QUEUED,
                priority=priority,
                resume_from=resume_from,
                finished_at=None,
            )
        case e.JobPriorityChanged(new_priority=priority):
            return s(state, priority=priority)
        case e.JobScheduled(attempt=attempt, runner_id=runner_id, gpu_ids=gpu_ids):
            return s(
                state,
                status=JobStatus.SCHEDULED,
                attempt=attempt,
                runner_id=runner_id,
                gpu_ids=gpu_ids,
                gpu_uuids=event.gpu_uuids,
                pid=None,
                peers=event.peers,
                ranks_started=(),
                master_addr=None,
                master_port=None,
            )
        case e.RankStartRequested(master_addr=addr, master_port=port):
            return s(state, master_addr=addr, master_port=port)
        case e.RankStarted(rank=rank):
            if rank in state.ranks_started:
                return state
            return s(state, ranks_started=(*state.ranks_started, rank))
        case e.JobStarted(pid=pid, command=argv, at=at, runner_id=runner_id):
            return s(
                state,
                start_warnings=event.warnings,
                tracker_urls={**state.tracker_urls, **event.tracker_urls},
                status=JobStatus.RUNNING,
                pid=pid,
                command=argv,
                started_at=at,
                last_runner_id=runner_id,
                run_since=at,
            )
        case e.JobProgressed():
            fields = msgspec.structs.asdict(event)
            for key in ("job_id", "attempt", "earlier"):
                fields.pop(key)
            return s(state, progress=Progress(**fields))
        case e.CheckpointSaved(step=step, path=path, attempt=attempt):
            checkpoint = Checkpoint(step=step, path=path, attempt=attempt)
            # The checkpoint lives where the job runs now, even if its start was never
            # recorded (a stop that overtook the runner's start report).
            holder = state.runner_id if state.runner_id is not None else state.last_runner_id
            return s(
                state,
                checkpoints=(*state.checkpoints, checkpoint),
                last_runner_id=holder,
                checkpointed_at=event.at,
            )
        case e.CheckpointRemoved(path=path):
            gone = tuple(cp for cp in state.checkpoints if cp.path == path)
            kept = tuple(cp for cp in state.checkpoints if cp.path != path)
            return s(
                state, checkpoints=kept, removed_checkpoints=(*state.removed_checkpoints, *gone)
            )
        case e.JobSucceeded(at=at, eval_results=scores, eval_error=eval_error):
            return s(
                state,
                eval_results=scores,
                eval_error=eval_error,
                eval_model=event.eval_model,
                status=JobStatus.SUCCEEDED,
                finished_at=at,
                runner_id=None,
                gpu_ids=(),
                stop_intent="stop",
                preempted_by=None,
                preempt_gpu_ids=(),
                peers=(),
            )
        case e.JobFailed(at=at, reason=reason, exit_code=exit_code):
            state = _with_failure(state, event.attempt, event.failure)
            return s(
                state,
                status=JobStatus.FAILED,
                finished_at=at,
                failure_reason=reason,
                exit_code=exit_code,
                runner_id=None,
                gpu_ids=(),
                stop_intent="stop",
                preempted_by=None,
                preempt_gpu_ids=(),
                peers=(),
            )
        case e.StopRequested(reason=reason, intent=intent):
            return s(
                state,
                status=JobStatus.STOPPING,
                stop_reason=reason,
                stop_intent=intent,
                preempted_by=event.preempted_by if intent == "preempt" else None,
                preempt_gpu_ids=event.reserved_gpu_ids if intent == "preempt" else (),
            )
        case e.JobStopped(at=at, reason=reason):
            return _ended(state, JobStatus.STOPPED, at, reason)
        case e.JobPaused(at=at, reason=reason):
            return _ended(state, JobStatus.PAUSED, at, reason)
        case e.JobCancelled(at=at, reason=reason):
            return _ended(state, JobStatus.CANCELLED, at, reason)
        case e.JobTimedOut(at=at, reason=reason):
            return _ended(state, JobStatus.TIMED_OUT, at, reason)
        case e.JobPreempted(at=at):
            return s(
                state,
                preemptions=state.preemptions + 1,
                preempted_at=(*state.preempted_at, at)[-PREEMPTIONS_KEPT:],
                stop_intent="stop",
                preempted_by=None,
                preempt_gpu_ids=(),
                runner_id=None,
                gpu_ids=(),
                pid=None,
            )
        case e.JobLost():
            return s(state, runner_id=None, gpu_ids=(), pid=None, peers=())
        case e.AssignmentRejected():
            return s(state, runner_id=None, gpu_ids=(), peers=())
        case e.JobRequeued(retries=retries, priority=priority, resume_from=resume_from):
            state = _after_retry(state, event)
            return s(
                state,
                status=JobStatus.QUEUED,
                retries=retries,
                priority=priority,
                resume_from=resume_from,
                runner_id=None,
                gpu_ids=(),
                peers=(),
                stop_intent="stop",
            )
        case e.ExportRequested(export_id=export_id, checkpoint=checkpoint, runner_id=runner_id):
            export = Export(export_id=export_id, checkpoint=checkpoint, runner_id=runner_id)
            return s(state, exports=(*state.exports, export))
        case e.ExportStarted(export_id=export_id):
            return s(state, exports=_replace_export(state, export_id, status="running"))
        case e.ExportSucceeded(export_id=export_id, artifact_path=path):
            exports = _replace_export(state, export_id, status="succeeded", artifact_path=path)
            return s(state, exports=exports)
        case e.ExportFailed(export_id=export_id, reason=reason):
            exports = _replace_export(state, export_id, status="failed", reason=reason)
            return s(state, exports=exports)
        case e.JobDeleted():
            return JobState(job_id=state.job_id, version=state.version, status=JobStatus.DELETED)
        case e.JobWarned(attempt=attempt, warning=kind, reason=reason, at=at):
            warning = JobWarning(attempt=attempt, kind=kind, reason=reason, at=at)
            return s(state, warnings=(*state.warnings, warning))
    raise AssertionError(f"unhandled event {event!r}")  # pragma: no cover


def replay(job_id: str, events: list[e.AnyJobEvent]) -> JobState:
    """Fold a history into the current state."""
    state = initial_state(job_id)
    for event in events:
        state = evolve(state, event)
    return state


#: The status ``evolve`` gives a job right after an event of this type, for every event
#: that sets one; any other event leaves the status as it was. The property tests check
#: this against ``evolve``, so an API can tell a command's outcome from its event types.
STATUS_AFTER: Final[dict[str, JobStatus]] = {
    cls.__name__: status
    for cls, status in (
        (e.JobSubmitted, JobStatus.NEW),
        (e.JobHeld, JobStatus.HELD),
        (e.JobWaiting, JobStatus.WAITING),
        (e.JobQueued, JobStatus.QUEUED),
        (e.JobRequeued, JobStatus.QUEUED),
        (e.JobScheduled, JobStatus.SCHEDULED),
        (e.JobStarted, JobStatus.RUNNING),
        (e.StopRequested, JobStatus.STOPPING),
        (e.JobStopped, JobStatus.STOPPED),
        (e.JobPaused, JobStatus.PAUSED),
        (e.JobCancelled, JobStatus.CANCELLED),
        (e.JobTimedOut, JobStatus.TIMED_OUT),
        (e.JobSucceeded, JobStatus.SUCCEEDED),
        (e.JobFailed, JobStatus.FAILED),
        (e.JobDeleted, JobStatus.DELETED),
    )
}


def status_after(event_types: Iterable[str]) -> JobStatus | None:
    """A job's status after events of these types, or None when none of them sets one."""
    status = None
    for name in event_types:
        status = STATUS_AFTER.get(name, status)
    return status
