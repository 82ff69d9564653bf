"""Small constructors for scheduling tests, so each test states only what it is about."""

from __future__ import annotations

import itertools
from datetime import datetime

from swift_trainer.projections.scheduler import GpuSnapshot, HostSnapshot, QueuedJob, RunningJob

H100 = "NVIDIA H100 80GB HBM3"
H100_MIB = 81559
A100_40 = "NVIDIA A100-SXM4-40GB"
A100_40_MIB = 40960

_seq = itertools.count(1)


def gpu(
    index: int,
    runner_id: str = "a",
    *,
    name: str = H100,
    total: int = H100_MIB,
    used: int = 0,
    foreign: int = 0,
    util: float = 0.0,
    healthy: bool = True,
    nvlink: str | None = None,
    pcie: str | None = None,
) -> GpuSnapshot:
    return GpuSnapshot(
        index=index,
        uuid=f"GPU-{runner_id}-{index}",
        name=name,
        memory_total_mib=total,
        memory_used_mib=used,
        foreign_memory_mib=foreign,
        utilization_pct=util,
        healthy=healthy,
        nvlink_group=nvlink,
        pcie_switch=pcie,
    )


def host(
    runner_id: str,
    count: int = 8,
    *,
    alive: bool = True,
    lease_expires_at: datetime | None = None,
    gpus: tuple[GpuSnapshot, ...] | None = None,
    name: str = H100,
    total: int = H100_MIB,
) -> HostSnapshot:
    if gpus is None:
        gpus = tuple(gpu(i, runner_id, name=name, total=total) for i in range(count))
    return HostSnapshot(
        runner_id=runner_id,
        gpus=gpus,
        alive=alive,
        lease_expires_at=lease_expires_at,
    )


def job(
    job_id: str,
    *,
    priority: int = 5,
    seq: int | None = None,
    gpus: int = 1,
    min_gb: float | None = None,
    gpu_name: str | None = None,
    attempt: int = 0,
    duration: float | None = None,
    owner: str | None = None,
) -> QueuedJob:
    return QueuedJob(
        job_id=job_id,
        priority=priority,
        seq=next(_seq) if seq is None else seq,
        gpu_count=gpus,
        min_gpu_memory_gb=min_gb,
        gpu_name=gpu_name,
        attempt=attempt,
        expected_duration_s=duration,
        owner=owner,
    )


def running(
    job_id: str,
    runner_id: str,
    gpu_ids: tuple[int, ...],
    remaining: float | None = None,
    owner: str | None = None,
) -> RunningJob:
    return RunningJob(
        job_id=job_id, runner_id=runner_id, gpu_ids=gpu_ids, remaining_s=remaining, owner=owner
    )
