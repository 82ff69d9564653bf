"""What a GPU host reports about itself: its GPUs, their processes and health, the host.

These are wire data shared by the runner (which measures them), the scheduler (which
places jobs from them) and the API (which shows them), so they live in core.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

import msgspec


class GpuProcess(msgspec.Struct, frozen=True, omit_defaults=True):
    pid: int
    #: None when the driver does not report it (e.g. without the right to see the process).
    used_memory_mib: int | None = None
    kind: Literal["compute", "graphics"] = "compute"
    name: str | None = None


#: Xids an application causes (a bad kernel, a page fault); the card itself is fine.
#: The others point at the card (NVIDIA's device plugin treats them the same way).
APPLICATION_XIDS: Final = frozenset({13, 31, 43, 45, 68, 109})


class XidEvent(msgspec.Struct, frozen=True):
    xid: int
    at: datetime


class GpuHealth(msgspec.Struct, frozen=True, omit_defaults=True):
    """None means "not supported or not reported", never "healthy"."""

    ecc_volatile_uncorrected: int | None = None
    ecc_aggregate_uncorrected: int | None = None
    retired_pages_pending: bool | None = None
    xid_events: tuple[XidEvent, ...] = ()
    #: Row remapping (A100 and later): a remap waits for a reset, or one failed.
    remapped_rows_pending: bool | None = None
    remapping_failed: bool | None = None
    #: Active hardware slowdowns: ``thermal``, ``power_brake`` (NVML's throttle reasons).
    throttled: tuple[str, ...] = ()

    @property
    def problems(self) -> tuple[str, ...]:
        """Why the card should get no new work, one reason each; empty when healthy."""
        found = []
        if self.ecc_volatile_uncorrected:
            found.append(f"{self.ecc_volatile_uncorrected} uncorrected ECC errors")
        if self.retired_pages_pending:
            found.append("retired pages wait for a reset")
        if self.remapped_rows_pending:
            found.append("remapped rows wait for a reset")
        if self.remapping_failed:
            found.append("row remapping failed")
        fatal = sorted({x.xid for x in self.xid_events if x.xid not in APPLICATION_XIDS})
        if fatal:
            found.append("Xid " + ", ".join(str(x) for x in fatal))
        found.extend(f"{reason.replace('_', ' ')} slowdown" for reason in self.throttled)
        return tuple(found)

    @property
    def suspect(self) -> bool:
        """Signals worth keeping jobs off the card until someone looks."""
        return bool(self.problems)


class GpuInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    index: int
    uuid: str
    name: str
    memory_total_mib: int
    memory_used_mib: int
    utilization_pct: int | None = None
    memory_utilization_pct: int | None = None
    temperature_c: int | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    processes: tuple[GpuProcess, ...] = ()
    health: GpuHealth = GpuHealth()

    @property
    def memory_free_mib(self) -> int:
        return max(self.memory_total_mib - self.memory_used_mib, 0)


class HostInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    hostname: str
    cpu_count: int
    memory_total_bytes: int
    memory_available_bytes: int
    disk_path: str
    disk_total_bytes: int
    disk_free_bytes: int
    cpu_percent: float | None = None
    load_average: tuple[float, float, float] | None = None


class InventorySnapshot(msgspec.Struct, frozen=True, omit_defaults=True):
    taken_at: datetime
    source: Literal["nvml", "simulated"]
    host: HostInfo
    gpus: tuple[GpuInfo, ...] = ()
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    #: What could not be read. Cards that could not be read are not listed, on purpose:
    #: the scheduler places nothing on a card it cannot see instead of trusting stale
    #: numbers (without NVML at all, the list is empty).
    error: str | None = None


class RunnerJob(msgspec.Struct, frozen=True, omit_defaults=True):
    """A job or export process this runner supervises right now."""

    job_id: str
    attempt: int
    kind: Literal["job", "export"] = "job"
    export_id: str | None = None
    pid: int | None = None


class RunnerHeartbeat(msgspec.Struct, frozen=True, omit_defaults=True):
    """Put in the runners' KV bucket every few seconds; its absence past ``lease_s`` means
    the runner is gone and the scheduler takes its jobs back."""

    runner_id: str
    at: datetime
    lease_s: float
    inventory: InventorySnapshot
    #: Per GPU index: memory held by processes this runner did not start (a GPU someone
    #: uses by hand counts as busy).
    foreign_memory_mib: dict[int, int] = {}
    jobs: tuple[RunnerJob, ...] = ()
    #: The runner stops taking new jobs (maintenance), but keeps running its own.
    draining: bool = False
    version: str = ""
    #: The runner's host labels (``runner --label KEY=VALUE``): jobs pick hosts by them.
    labels: dict[str, str] = {}
    #: The address other hosts reach this runner at (``runner --advertise-address``).
    advertise_address: str | None = None


_heartbeat_decoder = msgspec.json.Decoder(RunnerHeartbeat)


def decode_heartbeat(data: bytes) -> RunnerHeartbeat:
    return _heartbeat_decoder.decode(data)
