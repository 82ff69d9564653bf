"""Request and response bodies of the runner endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from ...core.limits import MAX_REASON_CHARS


class RunnerGpuHealth(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    uuid: str
    name: str
    healthy: bool
    #: Why the GPU gets no new jobs (empty when healthy).
    reasons: tuple[str, ...] = ()
    #: Since when the fleet has recorded it unhealthy.
    unhealthy_since: datetime | None = None


class RunnerStatus(msgspec.Struct, frozen=True, kw_only=True):
    runner_id: str
    alive: bool
    seen_at: datetime | None = None
    drained: bool = False
    drain_reason: str | None = None
    drained_at: datetime | None = None
    #: The drain also stops running jobs with a checkpoint and queues them again.
    drain_stops_jobs: bool = False
    gpus: list[RunnerGpuHealth] = []


class RunnersResponse(msgspec.Struct, frozen=True, kw_only=True):
    runners: list[RunnerStatus]


class DrainRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_REASON_CHARS)]
    #: Also stop the runner's jobs now, with a checkpoint, and queue them again.
    now: bool = False


class UndrainRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON_CHARS)] = "undrained"


class DrainResponse(msgspec.Struct, frozen=True, kw_only=True):
    runner_id: str
    drained: bool
    changed: bool
    message: str
