"""The runner's own check of an assignment, on snapshots built by hand."""

from __future__ import annotations

from datetime import UTC, datetime

from swift_trainer.core import events as e
from swift_trainer.core.inventory import GpuInfo, GpuProcess, HostInfo, InventorySnapshot
from swift_trainer.runner.host_checks import assignment_problem
from swift_trainer.runner.run_state import RunRecord

NOW = datetime.now(UTC)
HOST = HostInfo(
    hostname="h",
    cpu_count=1,
    memory_total_bytes=1,
    memory_available_bytes=1,
    disk_path="/",
    disk_total_bytes=1,
    disk_free_bytes=1,
)


def gpu(index: int, *processes: GpuProcess, used: int = 0) -> GpuInfo:
    return GpuInfo(
        index=index,
        uuid=f"GPU-{index}",
        name="A100",
        memory_total_mib=81920,
        memory_used_mib=used,
        processes=processes,
    )


def snapshot(*gpus: GpuInfo, error: str | None = None) -> InventorySnapshot:
    return InventorySnapshot(taken_at=NOW, source="simulated", host=HOST, gpus=gpus, error=error)


def scheduled(*gpu_ids: int, uuids: tuple[str, ...] | None = None) -> e.JobScheduled:
    return e.JobScheduled(
        job_id="j1",
        at=NOW,
        attempt=1,
        runner_id="r1",
        gpu_ids=gpu_ids,
        gpu_uuids=tuple(f"GPU-{i}" for i in gpu_ids) if uuids is None else uuids,
    )


def record(job_id: str, *gpu_ids: int) -> RunRecord:
    return RunRecord(
        kind="job",
        job_id=job_id,
        pid=1,
        sid=1,
        create_time=0.0,
        argv=(),
        output_dir="/o",
        stdout_path="/o/1",
        stderr_path="/o/2",
        gpu_ids=gpu_ids,
    )


def test_free_visible_gpus_pass() -> None:
    assert assignment_problem(scheduled(0, 1), snapshot(gpu(0), gpu(1)), set(), [], 1024) is None


def test_missing_and_stale_gpus_are_named() -> None:
    problem = assignment_problem(scheduled(0, 3), snapshot(gpu(0), error="nvml"), set(), [], 1024)
    assert problem == "GPUs [3] are not visible on this runner (nvml)"
    stale = assignment_problem(scheduled(0, uuids=("GPU-9",)), snapshot(gpu(0)), set(), [], 1024)
    assert stale == "GPU 0 is GPU-0 here, not GPU-9: the placement is stale"


def test_gpus_of_another_job_of_ours_are_refused_but_our_own_job_is_not() -> None:
    running = [record("j2", 1, 2)]
    problem = assignment_problem(scheduled(0, 1), snapshot(gpu(0), gpu(1)), set(), running, 1024)
    assert problem == "GPUs [1] are in use by job j2 on this runner"
    same = [record("j1", 0)]
    assert assignment_problem(scheduled(0), snapshot(gpu(0)), set(), same, 1024) is None


def test_foreign_memory_over_the_limit_is_refused_and_our_own_is_not() -> None:
    busy = gpu(0, GpuProcess(pid=50, used_memory_mib=2048), used=2048)
    problem = assignment_problem(scheduled(0), snapshot(busy), set(), [], 1024)
    assert problem == (
        "GPU 0 has 2048 MiB in use by processes this runner did not start (limit 1024 MiB)"
    )
    assert assignment_problem(scheduled(0), snapshot(busy), {50}, [], 1024) is None
    assert assignment_problem(scheduled(0), snapshot(busy), set(), [], 4096) is None
