"""The fleet: which runners are drained and which GPUs are unhealthy, and why.

One small aggregate (stream ``fleet``) with pure ``decide_fleet`` / ``evolve_fleet``. Its
events are the audit trail of every exclusion: who drained a runner, when and why, and
when a GPU left placement and came back. The scheduler folds them like any other state.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from . import commands as c
from . import events as e


class Drain(msgspec.Struct, frozen=True):
    """A runner that takes no new jobs."""

    reason: str
    at: datetime
    #: Its running jobs are stopped with a checkpoint and queued again.
    stop_jobs: bool = False


class GpuHealthRecord(msgspec.Struct, frozen=True):
    """A GPU's last recorded health."""

    runner_id: str
    index: int
    healthy: bool
    reasons: tuple[str, ...]
    at: datetime


class FleetState(msgspec.Struct, frozen=True):
    version: int = 0
    drained: dict[str, Drain] = {}
    #: GPU UUID -> its health as last recorded (only GPUs that were unhealthy once).
    gpus: dict[str, GpuHealthRecord] = {}

    def unhealthy(self) -> dict[str, GpuHealthRecord]:
        return {uuid: gpu for uuid, gpu in self.gpus.items() if not gpu.healthy}


def decide_fleet(state: FleetState, command: c.FleetCommand, now: datetime) -> list[e.FleetEvent]:
    """A drain that changes nothing, or a health already recorded, records nothing."""
    match command:
        case c.DrainRunner(runner_id=runner_id, reason=reason, stop_jobs=stop_jobs):
            known = state.drained.get(runner_id)
            if known is not None and (known.stop_jobs or not stop_jobs):
                return []
            return [
                e.RunnerDrained(at=now, runner_id=runner_id, reason=reason, stop_jobs=stop_jobs)
            ]
        case c.UndrainRunner(runner_id=runner_id, reason=reason):
            if runner_id not in state.drained:
                return []
            return [e.RunnerUndrained(at=now, runner_id=runner_id, reason=reason)]
        case c.RecordGpuHealth():
            known_gpu = state.gpus.get(command.gpu_uuid)
            healthy = not command.reasons
            if known_gpu is None and healthy:
                return []  # a GPU never seen unhealthy is healthy already
            if known_gpu is not None and (known_gpu.healthy, known_gpu.reasons) == (
                healthy,
                command.reasons,
            ):
                return []
            return [
                e.GpuHealthChanged(
                    at=now,
                    runner_id=command.runner_id,
                    gpu_uuid=command.gpu_uuid,
                    gpu_index=command.gpu_index,
                    healthy=healthy,
                    reasons=command.reasons,
                )
            ]
    raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover


def evolve_fleet(state: FleetState, event: e.FleetEvent) -> FleetState:
    version = state.version + 1
    match event:
        case e.RunnerDrained(runner_id=runner_id, reason=reason, stop_jobs=stop_jobs, at=at):
            drained = {**state.drained, runner_id: Drain(reason, at, stop_jobs)}
            return msgspec.structs.replace(state, version=version, drained=drained)
        case e.RunnerUndrained(runner_id=runner_id):
            drained = {k: v for k, v in state.drained.items() if k != runner_id}
            return msgspec.structs.replace(state, version=version, drained=drained)
        case e.GpuHealthChanged():
            record = GpuHealthRecord(
                runner_id=event.runner_id,
                index=event.gpu_index,
                healthy=event.healthy,
                reasons=event.reasons,
                at=event.at,
            )
            gpus = {**state.gpus, event.gpu_uuid: record}
            return msgspec.structs.replace(state, version=version, gpus=gpus)
    raise AssertionError(f"unhandled event {event!r}")  # pragma: no cover
