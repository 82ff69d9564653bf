"""What the GPU and system endpoints count: runner heartbeats, GPU holders, this host.

Heartbeats are decoded as the runner's own ``RunnerHeartbeat``, so ``/gpus`` has a schema;
fields a newer runner adds are ignored here until this schema learns them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import msgspec

from ...core.host import host_info
from ...core.inventory import decode_heartbeat
from ...core.job import ACTIVE
from ...projections.read_models.interface import MAX_PAGE_SIZE, ReadModel
from ...projections.read_models.views import FleetView
from .schemas import GpusResponse, GpuView, HostStats, RunnerGpus


class GpuHolder(msgspec.Struct, frozen=True):
    """The job holding a GPU, and whose job it is."""

    job_id: str
    owner: str | None = None


#: Whether the caller may see the work of an owner (``Principal.may_see``).
OwnerFilter = Callable[[str | None], bool]


def _everyone(_owner: str | None) -> bool:
    return True


async def gpu_holders(
    read_model: ReadModel, ranks: dict[tuple[str, int], int] | None = None
) -> dict[tuple[str, int], GpuHolder]:
    """``(runner_id, gpu index) -> holder`` for every job that holds GPUs now; ``ranks``,
    when given, is filled with the rank each GPU of a multi-node job serves."""
    holders: dict[tuple[str, int], GpuHolder] = {}
    for status in sorted(ACTIVE):
        cursor: str | None = None
        while True:
            page = await read_model.list_jobs(status=status, cursor=cursor, limit=MAX_PAGE_SIZE)
            for job in page.items:
                if job.runner_id is not None:
                    for index in job.gpu_ids:
                        holders[(job.runner_id, index)] = GpuHolder(job.job_id, job.owner)
                        if ranks is not None and job.peers:
                            ranks[(job.runner_id, index)] = 0
                    for peer in job.peers:
                        for index in peer.gpu_ids:
                            holders[(peer.runner_id, index)] = GpuHolder(job.job_id, job.owner)
                            if ranks is not None:
                                ranks[(peer.runner_id, index)] = peer.rank
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
    holders: dict[tuple[str, int], GpuHolder],
    may_see: OwnerFilter = _everyone,
    ranks: dict[tuple[str, int], int] | None = None,
) -> RunnerGpus:
    """One runner's GPUs; another owner's job is shown as a held GPU without its id,
    processes or run (``may_see`` says whose work the caller may see)."""
    age = max((now - seen_at).total_seconds(), 0.0)
    alive = age <= lease_s
    try:
        beat = decode_heartbeat(data)
    except msgspec.DecodeError as exc:
        return RunnerGpus(
            runner_id=runner_id,
            seen_at=seen_at,
            age_s=age,
            alive=alive,
            gpus=[],
            error=f"the heartbeat could not be read: {exc}",
        )
    gpus = []
    for gpu in beat.inventory.gpus:
        holder = holders.get((runner_id, gpu.index))
        hidden = holder is not None and not may_see(holder.owner)
        shown = msgspec.structs.replace(gpu, processes=()) if hidden else gpu
        gpus.append(
            GpuView(
                **msgspec.structs.asdict(shown),
                job_id=None if holder is None or hidden else holder.job_id,
                held=holder is not None,
                rank=(ranks or {}).get((runner_id, gpu.index)),
                foreign_memory_mib=beat.foreign_memory_mib.get(gpu.index),
                health_problems=gpu.health.problems,
            )
        )
    inventory = msgspec.structs.replace(beat.inventory, gpus=())
    # A run of a job holding no GPU now has no known owner: only callers who see all get it.
    owners = {h.job_id: h.owner for (runner, _), h in holders.items() if runner == runner_id}
    jobs = tuple(j for j in beat.jobs if may_see(owners.get(j.job_id)))
    return RunnerGpus(
        runner_id=runner_id,
        seen_at=seen_at,
        age_s=age,
        alive=alive,
        gpus=gpus,
        inventory=msgspec.structs.replace(beat, inventory=inventory, jobs=jobs),
    )


async def gpus_overview(
    read_model: ReadModel, now: datetime, lease_s: float, may_see: OwnerFilter = _everyone
) -> GpusResponse:
    ranks: dict[tuple[str, int], int] = {}
    holders = await gpu_holders(read_model, ranks)
    runners = [
        _runner_view(
            runner_id=s.runner_id,
            seen_at=s.seen_at,
            data=s.data,
            now=now,
            lease_s=lease_s,
            holders=holders,
            may_see=may_see,
            ranks=ranks,
        )
        for s in await read_model.runner_snapshots()
    ]
    live = [gpu for runner in runners if runner.alive for gpu in runner.gpus]
    assigned = sum(1 for gpu in live if gpu.held)
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


def with_drains(overview: GpusResponse, fleet: FleetView) -> GpusResponse:
    """Mark the runners an operator drained, with the reason."""
    drains = {d.runner_id: d for d in fleet.drained}
    if not drains:
        return overview
    runners = [
        msgspec.structs.replace(r, drained=True, drain_reason=drains[r.runner_id].reason)
        if r.runner_id in drains
        else r
        for r in overview.runners
    ]
    return msgspec.structs.replace(overview, runners=runners)
