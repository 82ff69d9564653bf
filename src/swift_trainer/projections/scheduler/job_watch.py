"""What a leading scheduler corrects from the fleet and the running jobs, as commands.

Pure: ``watch_actions`` reads the scheduler's state (the jobs, the fleet's events, the
runners' latest heartbeats) and returns the commands to send, each with a key so that a
command is not sent again while it is in flight. Every correction is an event with its
reason once the aggregate accepts it:

* a GPU whose health changed is recorded (``GpuHealthChanged``), so the audit trail says
  when and why it left placement and came back;
* a job on a GPU recorded unhealthy, or on a runner drained with ``stop_jobs``, is stopped
  with a checkpoint and queued again (``RequeueJob``);
* a resumed attempt whose steps have not reached its checkpoint's within
  ``resume_check_s`` is flagged ``resume_stalled``;
* a job whose GPUs stayed under ``idle_util_pct`` for ``idle_warn_s`` is flagged ``idle``,
  and stopped with a checkpoint after ``idle_stop_s`` when that is set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Final

import msgspec

from swift_trainer.core import commands as c
from swift_trainer.core.fleet import FleetState
from swift_trainer.core.inventory import RunnerHeartbeat
from swift_trainer.core.job import JobState, JobStatus

_CHECKPOINT_STEP: Final = re.compile(r"checkpoint-(\d+)/?$")
#: ``(what, subject, attempt)``: one in-flight command per key.
ActionKey = tuple[str, str, int]


class WatchLimits(msgspec.Struct, frozen=True, kw_only=True):
    """The bounds of the rules (settings ``RESUME_CHECK_S``, ``IDLE_GPU_*``)."""

    resume_check_s: float = 600.0
    idle_warn_s: float = 1800.0
    idle_util_pct: float = 5.0
    idle_stop_s: float | None = None


class Action(msgspec.Struct, frozen=True):
    key: ActionKey
    command: c.AnyCommand


def checkpoint_step(path: str | None) -> int | None:
    """The step a ``checkpoint-N`` folder was saved at."""
    match = _CHECKPOINT_STEP.search(path or "")
    return int(match.group(1)) if match else None


def health_actions(fleet: FleetState, heartbeats: Mapping[str, RunnerHeartbeat]) -> list[Action]:
    """Record each GPU whose health differs from what the fleet's events say."""
    actions = []
    for runner_id, beat in sorted(heartbeats.items()):
        for gpu in beat.inventory.gpus:
            reasons = gpu.health.problems
            known = fleet.gpus.get(gpu.uuid)
            if known is None and not reasons:
                continue
            if known is not None and known.reasons == reasons and known.healthy == (not reasons):
                continue
            command = c.RecordGpuHealth(
                runner_id=runner_id, gpu_uuid=gpu.uuid, gpu_index=gpu.index, reasons=reasons
            )
            actions.append(Action(("health", gpu.uuid + "|" + "|".join(reasons), 0), command))
    return actions


def _requeue_reason(job: JobState, fleet: FleetState) -> str | None:
    runner_id = job.runner_id
    if runner_id is None:
        return None
    drain = fleet.drained.get(runner_id)
    if drain is not None and drain.stop_jobs:
        return f"runner {runner_id} drained: {drain.reason}"
    for uuid in job.gpu_uuids:
        record = fleet.gpus.get(uuid)
        if record is not None and not record.healthy:
            return f"GPU {record.index} ({uuid}) on {runner_id} is unhealthy: " + "; ".join(
                record.reasons
            )
    return None


def _stalled_resume(job: JobState, now: datetime, limit_s: float) -> str | None:
    step = checkpoint_step(job.resume_from)
    started = job.started_at
    if step is None or started is None or (now - started).total_seconds() < limit_s:
        return None
    progress = job.progress
    reached = (
        progress.step if progress is not None and progress.at and progress.at >= started else None
    )
    if reached is not None and reached >= step:
        return None
    seen = "no step reported" if reached is None else f"step {reached} reported"
    return (
        f"resumed from checkpoint step {step} but {seen} within {limit_s:g} s: "
        "the resume may hang or skip its data"
    )


def job_actions(
    jobs: Mapping[str, JobState],
    fleet: FleetState,
    now: datetime,
    limits: WatchLimits,
    idle_since: Mapping[tuple[str, int], datetime],
) -> list[Action]:
    """Requeues, resume checks and idle warnings for the active jobs."""
    actions = []
    for job_id, job in sorted(jobs.items()):
        if job.status not in (JobStatus.SCHEDULED, JobStatus.RUNNING):
            continue
        attempt = job.attempt
        why = _requeue_reason(job, fleet)
        if why is not None:
            actions.append(
                Action(("requeue", job_id, attempt), c.RequeueJob(job_id=job_id, reason=why))
            )
            continue
        if job.status is not JobStatus.RUNNING:
            continue
        warned = {w.kind for w in job.warnings if w.attempt == attempt}
        stalled = _stalled_resume(job, now, limits.resume_check_s)
        if stalled is not None and "resume_stalled" not in warned:
            flag = c.FlagJob(
                job_id=job_id, attempt=attempt, warning="resume_stalled", reason=stalled
            )
            actions.append(Action(("resume_stalled", job_id, attempt), flag))
        since = idle_since.get((job_id, attempt))
        if since is None:
            continue
        idle_s = (now - since).total_seconds()
        what = f"its GPUs stayed under {limits.idle_util_pct:g}% utilisation for {idle_s:.0f} s"
        if limits.idle_stop_s is not None and idle_s >= limits.idle_stop_s:
            stop = c.StopJob(job_id=job_id, reason=f"stopped as idle: {what}")
            actions.append(Action(("idle_stop", job_id, attempt), stop))
        elif idle_s >= limits.idle_warn_s and "idle" not in warned:
            flag = c.FlagJob(job_id=job_id, attempt=attempt, warning="idle", reason=f"idle: {what}")
            actions.append(Action(("idle", job_id, attempt), flag))
    return actions


def track_idle(
    idle_since: dict[tuple[str, int], datetime],
    jobs: Mapping[str, JobState],
    heartbeats: Mapping[str, RunnerHeartbeat],
    now: datetime,
    util_pct: float,
) -> None:
    """Keep when each running attempt's GPUs went idle (all under ``util_pct``)."""
    live = set()
    for job_id, job in jobs.items():
        beat = heartbeats.get(job.runner_id or "")
        if job.status is not JobStatus.RUNNING or beat is None or not job.gpu_ids:
            continue
        key = (job_id, job.attempt)
        live.add(key)
        readings = [g.utilization_pct for g in beat.inventory.gpus if g.index in job.gpu_ids]
        idle = bool(readings) and all(r is not None and r < util_pct for r in readings)
        if not idle:
            idle_since.pop(key, None)
        else:
            idle_since.setdefault(key, now)
    for key in [k for k in idle_since if k not in live]:
        del idle_since[key]
