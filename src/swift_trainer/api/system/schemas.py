"""Bodies of the GPU, system and health endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from ...core.inventory import GpuInfo, RunnerHeartbeat
from ..queue.schemas import ProcessorStatus


class GpuView(GpuInfo, frozen=True, omit_defaults=False):
    """A GPU as its runner reports it, plus who holds it."""

    #: The job of this system holding it, else null; null too for another owner's job
    #: when a ``user`` key asks (``held`` still says the GPU is taken).
    job_id: str | None = None
    #: A job of this system holds it (whoever owns that job).
    held: bool = False
    #: Memory held by processes its runner did not start, when there is any.
    foreign_memory_mib: int | None = None
    #: Why the GPU gets no new jobs (Xid, ECC, remapped rows, slowdowns); empty: healthy.
    health_problems: tuple[str, ...] = ()
    #: The rank of the multi-node job holding it (0 is the rank that reports progress).
    rank: int | None = None


class RunnerGpus(msgspec.Struct, frozen=True, kw_only=True):
    runner_id: str
    seen_at: datetime
    #: Seconds since the runner's last heartbeat.
    age_s: float
    #: Heard from within the runner lease.
    alive: bool
    #: The runner's GPUs as it reports them, each with ``job_id`` set while a job of this
    #: system holds it.
    gpus: list[GpuView]
    #: The rest of the runner's heartbeat (host, driver, its jobs); its GPUs are in ``gpus``.
    inventory: RunnerHeartbeat | None = None
    #: Set when the heartbeat could not be read.
    error: str | None = None
    #: Drained by an operator: it takes no new jobs (``drain_reason`` says why).
    drained: bool = False
    drain_reason: str | None = None


class GpusResponse(msgspec.Struct, frozen=True, kw_only=True):
    runners: list[RunnerGpus]
    #: GPUs of live runners.
    total: int
    #: GPUs of live runners that no job of this system holds.
    free: int
    assigned: int


class HostStats(msgspec.Struct, frozen=True, kw_only=True):
    """The API host itself; GPU hosts report theirs in their runner heartbeats."""

    hostname: str
    cpu_count: int
    cpu_percent: float
    load_average: tuple[float, float, float] | None
    memory_total_bytes: int
    memory_available_bytes: int
    memory_percent: float
    disk_path: str
    disk_total_bytes: int
    disk_free_bytes: int
    disk_percent: float


class SystemStatus(msgspec.Struct, frozen=True, kw_only=True):
    host: HostStats
    #: Live jobs per status (every status present).
    jobs: dict[str, int]
    queue_length: int
    processor: ProcessorStatus
    runners_known: int
    runners_alive: int
    gpus_total: int
    gpus_free: int
    #: The last event the read model has applied (how fresh these numbers are).
    read_model_position: int
    checked_at: datetime


class Health(msgspec.Struct, frozen=True):
    status: Literal["ok"] = "ok"


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["ready"] = "ready"
    checks: dict[str, bool | str]
