"""The scheduler's job watch: health records, requeues, stalled resumes, idle jobs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from tests.projections.conftest import heartbeat

from swift_trainer.core import commands as c
from swift_trainer.core.fleet import Drain, FleetState, GpuHealthRecord
from swift_trainer.core.inventory import GpuHealth, RunnerHeartbeat, XidEvent
from swift_trainer.core.job import JobState, JobStatus, JobWarning, Progress
from swift_trainer.core.spec import JobSpec
from swift_trainer.projections.scheduler.job_watch import (
    WatchLimits,
    checkpoint_step,
    health_actions,
    job_actions,
    track_idle,
)

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
LIMITS = WatchLimits(resume_check_s=600, idle_warn_s=1800, idle_util_pct=5, idle_stop_s=None)


def running(**fields: object) -> JobState:
    base: dict[str, object] = {
        "job_id": "j1",
        "status": JobStatus.RUNNING,
        "spec": JobSpec(data_path="d", model_path="m", output_dir="o"),
        "attempt": 2,
        "runner_id": "r1",
        "gpu_ids": (0,),
        "gpu_uuids": ("GPU-r1-0",),
        "started_at": NOW - timedelta(seconds=700),
    }
    base.update(fields)
    return JobState(**base)  # type: ignore[arg-type]


def sick_beat() -> RunnerHeartbeat:
    beat = heartbeat("r1", gpus=2, at=NOW)
    gpus = list(beat.inventory.gpus)
    gpus[1] = msgspec.structs.replace(
        gpus[1], health=GpuHealth(xid_events=(XidEvent(xid=79, at=NOW),))
    )
    inventory = msgspec.structs.replace(beat.inventory, gpus=tuple(gpus))
    return msgspec.structs.replace(beat, inventory=inventory)


def test_a_gpu_turning_unhealthy_is_recorded_with_its_reason() -> None:
    (action,) = health_actions(FleetState(), {"r1": sick_beat()})
    assert action.command == c.RecordGpuHealth(
        runner_id="r1", gpu_uuid="GPU-r1-1", gpu_index=1, reasons=("Xid 79",)
    )
    recorded = FleetState(gpus={"GPU-r1-1": GpuHealthRecord("r1", 1, False, ("Xid 79",), NOW)})
    assert health_actions(recorded, {"r1": sick_beat()}) == []
    # Healthy again: recorded as such.
    (back,) = health_actions(recorded, {"r1": heartbeat("r1", gpus=2, at=NOW)})
    assert back.command == c.RecordGpuHealth(runner_id="r1", gpu_uuid="GPU-r1-1", gpu_index=1)


def test_a_job_on_an_unhealthy_gpu_is_requeued_with_the_reason() -> None:
    fleet = FleetState(gpus={"GPU-r1-0": GpuHealthRecord("r1", 0, False, ("Xid 79",), NOW)})
    (action,) = job_actions({"j1": running()}, fleet, NOW, LIMITS, {})
    assert isinstance(action.command, c.RequeueJob)
    assert "GPU 0 (GPU-r1-0) on r1 is unhealthy: Xid 79" in action.command.reason


def test_drain_now_requeues_and_a_plain_drain_does_not() -> None:
    plain = FleetState(drained={"r1": Drain("swap", NOW, False)})
    assert job_actions({"j1": running()}, plain, NOW, LIMITS, {}) == []
    now = FleetState(drained={"r1": Drain("swap", NOW, True)})
    (action,) = job_actions({"j1": running()}, now, NOW, LIMITS, {})
    assert action.command == c.RequeueJob(job_id="j1", reason="runner r1 drained: swap")


def test_a_resume_that_does_not_reach_its_checkpoint_is_flagged_once() -> None:
    resumed = running(resume_from="/out/o/checkpoint-500")
    (action,) = job_actions({"j1": resumed}, FleetState(), NOW, LIMITS, {})
    assert isinstance(action.command, c.FlagJob)
    assert action.command.warning == "resume_stalled"
    assert "checkpoint step 500" in action.command.reason
    # Reached in time (progress of this attempt): fine.
    progress = Progress(step=510, at=NOW - timedelta(seconds=10))
    ok = running(resume_from="/out/o/checkpoint-500", progress=progress)
    assert job_actions({"j1": ok}, FleetState(), NOW, LIMITS, {}) == []
    # Too early to tell.
    early = running(resume_from="/out/o/checkpoint-500", started_at=NOW - timedelta(seconds=60))
    assert job_actions({"j1": early}, FleetState(), NOW, LIMITS, {}) == []
    # Flagged already.
    warned = running(
        resume_from="/out/o/checkpoint-500",
        warnings=(JobWarning(attempt=2, kind="resume_stalled", reason="x", at=NOW),),
    )
    assert job_actions({"j1": warned}, FleetState(), NOW, LIMITS, {}) == []


def test_an_idle_job_is_warned_then_stopped_when_a_stop_is_set() -> None:
    jobs = {"j1": running()}
    idle: dict[tuple[str, int], datetime] = {}
    beat = heartbeat("r1", gpus=1, at=NOW)  # utilization None: unknown is not idle
    track_idle(idle, jobs, {"r1": beat}, NOW, 5)
    assert idle == {}
    gpu = msgspec.structs.replace(beat.inventory.gpus[0], utilization_pct=1)
    quiet = msgspec.structs.replace(
        beat, inventory=msgspec.structs.replace(beat.inventory, gpus=(gpu,))
    )
    track_idle(idle, jobs, {"r1": quiet}, NOW - timedelta(seconds=2000), 5)
    assert idle == {("j1", 2): NOW - timedelta(seconds=2000)}
    (warn,) = job_actions(jobs, FleetState(), NOW, LIMITS, idle)
    assert isinstance(warn.command, c.FlagJob)
    assert warn.command.warning == "idle"
    stopping = msgspec.structs.replace(LIMITS, idle_stop_s=1900)
    (stop,) = job_actions(jobs, FleetState(), NOW, stopping, idle)
    assert isinstance(stop.command, c.StopJob)
    # Busy again (1% is above a 0.5% threshold): the clock restarts.
    track_idle(idle, jobs, {"r1": quiet}, NOW, 0.5)
    assert idle == {}


def test_checkpoint_steps_are_read_from_the_folder_name() -> None:
    assert checkpoint_step("/o/checkpoint-1800") == 1800
    assert checkpoint_step("/o/checkpoint-1800/") == 1800
    assert checkpoint_step("/o/final") is None
    assert checkpoint_step(None) is None
