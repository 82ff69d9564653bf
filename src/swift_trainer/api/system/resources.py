"""What the GPU and system endpoints count: runner heartbeats, GPU holders, this host.

Runner heartbeats are opaque to the read model (the runner defines their shape); here they
are decoded as plain JSON and passed through, with only the ``gpus`` array interpreted, so a
runner that grows its heartbeat needs no API change.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from ...core.host import host_info
from ...core.job import ACTIVE
from ...projections.read_models.interface import MAX_PAGE_SIZE, ReadModel
from .schemas import GpusResponse, HostStats, RunnerGpus


async def gpu_holders(read_model: ReadModel) -> dict[tuple[str, int], str]:
    """``(runner_id, gpu index) -> job_id`` for every job that holds GPUs now."""
    holders: dict[tuple[str, int], str] = {}
    for status in sorted(ACTIVE):
        cursor: str | None = None
        while True:
            page = await read_model.list_jobs(status=status, cursor=cursor, limit=MAX_PAGE_SIZE)
            for job in page.items:
                if job.runner_id is not None:
                    for index in job.gpu_ids:
                        holders[(job.runner_id, index)] = job.job_id
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    return holders


def _runner_view(
    *,
    runner_id: str,
    seen_at: datetime,
    data: bytes,
    now: datetime,
    lease_s: float,
    holders: dict[tuple[str, int], str],
) -> RunnerGpus:
    age = max((now - seen_at).total_seconds(), 0.0)
    alive = age <= lease_s
    try:
        decoded: Any = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        return RunnerGpus(
            runner_id=runner_id,
            seen_at=seen_at,
            age_s=age,
            alive=alive,
            gpus=[],
            error=f"heartbeat is not JSON: {exc}",
        )
    if not isinstance(decoded, dict):
        return RunnerGpus(
            runner_id=runner_id,
            seen_at=seen_at,
            age_s=age,
            alive=alive,
            gpus=[],
            error="heartbeat is not a JSON object",
        )
    gpus: list[dict[str, Any]] = []
    # A runner heartbeat (core.inventory.RunnerHeartbeat) nests its GPUs in the inventory.
    inventory = decoded.get("inventory")
    source = inventory if isinstance(inventory, dict) and "gpus" in inventory else decoded
    raw_gpus = source.pop("gpus", [])
    foreign = decoded.get("foreign_memory_mib")
    foreign = foreign if isinstance(foreign, dict) else {}
    for gpu in raw_gpus if isinstance(raw_gpus, list) else []:
        if not isinstance(gpu, dict):
            continue
        index = gpu.get("index")
        holder = holders.get((runner_id, index)) if isinstance(index, int) else None
        extra = {"foreign_memory_mib": foreign.get(str(index))} if str(index) in foreign else {}
        gpus.append({**gpu, **extra, "job_id": holder})
    return RunnerGpus(
        runner_id=runner_id, seen_at=seen_at, age_s=age, alive=alive, gpus=gpus, inventory=decoded
    )


async def gpus_overview(read_model: ReadModel, now: datetime, lease_s: float) -> GpusResponse:
    holders = await gpu_holders(read_model)
    runners = [
        _runner_view(
            runner_id=s.runner_id,
            seen_at=s.seen_at,
            data=s.data,
            now=now,
            lease_s=lease_s,
            holders=holders,
        )
        for s in await read_model.runner_snapshots()
    ]
    live = [gpu for runner in runners if runner.alive for gpu in runner.gpus]
    assigned = sum(1 for gpu in live if gpu["job_id"] is not None)
    return GpusResponse(
        runners=runners, total=len(live), free=len(live) - assigned, assigned=assigned
    )


def host_stats(output_root: str) -> HostStats:
    """Blocking (psutil reads /proc and statfs): call it in a worker thread."""
    info = host_info(output_root)
    return HostStats(
        hostname=info.hostname,
        cpu_count=info.cpu_count,
        cpu_percent=info.cpu_percent or 0.0,
        load_average=info.load_average,
        memory_total_bytes=info.memory_total_bytes,
        memory_available_bytes=info.memory_available_bytes,
        memory_percent=_percent_used(info.memory_available_bytes, info.memory_total_bytes),
        disk_path=info.disk_path,
        disk_total_bytes=info.disk_total_bytes,
        disk_free_bytes=info.disk_free_bytes,
        disk_percent=_percent_used(info.disk_free_bytes, info.disk_total_bytes),
    )


def _percent_used(free: int, total: int) -> float:
    return round(100.0 * (total - free) / total, 1) if total else 0.0
