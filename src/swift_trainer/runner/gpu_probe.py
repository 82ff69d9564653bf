"""What a runner has to offer: its GPUs (through NVML, or simulated) and its host.

The scheduler places jobs from these snapshots, so they must say not only how much memory
a card has but who is using it: a card busy with a process this runner did not start is
busy (docs/architecture.md, "Where GPUs are chosen"), which is why every GPU lists its
processes and ``foreign_processes`` separates them from our own job trees.

Every NVML query beyond the basics is optional: consumer cards and MIG slices answer
``NVMLError_NotSupported`` for ECC, retired pages or power, and one unsupported counter must
not hide a whole GPU from the scheduler.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, Final, Literal, Protocol, TypeVar

import psutil

from ..core.host import host_info
from ..core.inventory import (
    GpuHealth,
    GpuInfo,
    GpuProcess,
    HostInfo,
    InventorySnapshot,
    XidEvent,
)

_MIB: Final = 1024 * 1024
#: Under a simulated runner's output root: where the simulator reports faulted cards.
SIM_FAULT_DIR: Final = ".sim-gpu-faults"
_XID_HISTORY: Final = 16
_T = TypeVar("_T")


__all__ = [
    "FakeInventory",
    "GpuHealth",
    "GpuInfo",
    "GpuInventory",
    "GpuProcess",
    "HostInfo",
    "InventorySnapshot",
    "NvmlInventory",
    "XidEvent",
]


class GpuInventory(Protocol):
    """What the runner's heartbeat calls; the NVML and the simulated inventory both fit."""

    def snapshot(self) -> InventorySnapshot: ...

    def close(self) -> None: ...


class GpuProcessRegistry(Protocol):
    """The supervisor tells the inventory which process trees are ours, and on which GPUs."""

    def track(self, key: str, root_pid: int, gpu_ids: Sequence[int]) -> None: ...

    def untrack(self, key: str) -> None: ...


# --- host -------------------------------------------------------------------------------------


# --- foreign usage ----------------------------------------------------------------------------


def process_tree_pids(root_pids: Iterable[int]) -> set[int]:
    """The pids of these processes and all their descendants that are alive now."""
    pids: set[int] = set()
    for pid in root_pids:
        try:
            root = psutil.Process(pid)
            pids.add(pid)
            pids.update(child.pid for child in root.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return pids


def foreign_processes(gpu: GpuInfo, own_pids: Collection[int]) -> tuple[GpuProcess, ...]:
    """Processes on the card this runner did not start (pids outside our job trees).

    A pid NVML reports from another PID namespace (a container) is not one of ours either,
    so it correctly counts as foreign.
    """
    return tuple(p for p in gpu.processes if p.pid not in own_pids)


def foreign_memory_mib(gpu: GpuInfo, own_pids: Collection[int]) -> int:
    """Memory held by foreign processes; unknown per-process memory counts as the rest of
    the card's used memory not explained by our own processes."""
    foreign = foreign_processes(gpu, own_pids)
    if not foreign:
        return 0
    if all(p.used_memory_mib is not None for p in foreign):
        return sum(p.used_memory_mib or 0 for p in foreign)
    own = sum(p.used_memory_mib or 0 for p in gpu.processes if p.pid in own_pids)
    return max(gpu.memory_used_mib - own, 0)


# --- NVML -------------------------------------------------------------------------------------


class NvmlInventory:
    """GPU facts through NVML (``pynvml`` from nvidia-ml-py).

    Without the library or the driver, ``snapshot()`` returns no GPUs and an ``error`` that
    says why; it tries again on the next call, so a driver loaded later is picked up. The
    ``nvml`` module can be injected, which is how the mapping is tested without a GPU.
    """

    def __init__(self, output_root: str | Path, *, nvml: ModuleType | None = None) -> None:
        self.output_root = Path(output_root)
        self._nvml = nvml
        self._initialised = False
        self._lock = threading.Lock()
        self._event_set: Any = None
        self._xids: dict[int, deque[XidEvent]] = {}
        self._uuid_index: dict[str, int] = {}

    def _module(self) -> ModuleType:
        if self._nvml is None:
            import pynvml

            self._nvml = pynvml
        return self._nvml

    def _ensure_init(self) -> ModuleType:
        nvml = self._module()
        if not self._initialised:
            nvml.nvmlInit()
            self._initialised = True
            self._register_xid_events(nvml)
        return nvml

    @property
    def available(self) -> bool:
        with self._lock:
            try:
                self._ensure_init()
            except ImportError:
                return False
            except Exception as exc:
                if self._is_nvml_error(exc):
                    return False
                raise
            return True

    def _is_nvml_error(self, exc: BaseException) -> bool:
        nvml = self._nvml
        error = getattr(nvml, "NVMLError", None) if nvml is not None else None
        return isinstance(error, type) and isinstance(exc, error)

    def _optional(self, call: Callable[[], _T]) -> _T | None:
        """A query a card may not support; only NVML's own errors mean "not available"."""
        try:
            return call()
        except Exception as exc:
            if self._is_nvml_error(exc):
                return None
            raise

    def snapshot(self) -> InventorySnapshot:
        host = host_info(self.output_root)
        now = datetime.now(UTC)
        with self._lock:
            try:
                nvml = self._ensure_init()
                gpus, problems = self._read_gpus(nvml)
                driver = self._optional(lambda: _text(nvml.nvmlSystemGetDriverVersion()))
                cuda = self._optional(lambda: _cuda_version(nvml.nvmlSystemGetCudaDriverVersion()))
            except ImportError as exc:
                return InventorySnapshot(
                    taken_at=now,
                    source="nvml",
                    host=host,
                    error=f"NVML unavailable: cannot import pynvml ({exc})",
                )
            except Exception as exc:
                if not self._is_nvml_error(exc):
                    raise
                self._initialised = False
                return InventorySnapshot(
                    taken_at=now,
                    source="nvml",
                    host=host,
                    error=f"NVML unavailable: {type(exc).__name__}: {exc}",
                )
        return InventorySnapshot(
            taken_at=now,
            source="nvml",
            host=host,
            gpus=gpus,
            driver_version=driver,
            cuda_driver_version=cuda,
            error="; ".join(problems) or None,
        )

    def _read_gpus(self, nvml: ModuleType) -> tuple[tuple[GpuInfo, ...], list[str]]:
        """Every card that answers; one that has fallen off the bus ("GPU is lost") is left
        out and named, instead of hiding the healthy ones with it."""
        self._drain_xid_events(nvml)
        gpus, problems = [], []
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                gpus.append(self._read_gpu(nvml, index))
            except Exception as exc:
                if not self._is_nvml_error(exc):
                    raise
                problems.append(f"GPU {index}: {type(exc).__name__}: {exc}")
        return tuple(gpus), problems

    def _read_gpu(self, nvml: ModuleType, index: int) -> GpuInfo:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        self._uuid_index[uuid] = index
        rates = self._optional(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        temperature = self._optional(
            lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
        )
        power = self._optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        limit = self._optional(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle))
        return GpuInfo(
            index=index,
            uuid=uuid,
            name=_text(nvml.nvmlDeviceGetName(handle)),
            memory_total_mib=int(memory.total) // _MIB,
            memory_used_mib=int(memory.used) // _MIB,
            utilization_pct=int(rates.gpu) if rates is not None else None,
            memory_utilization_pct=int(rates.memory) if rates is not None else None,
            temperature_c=int(temperature) if temperature is not None else None,
            power_draw_w=power / 1000.0 if power is not None else None,
            power_limit_w=limit / 1000.0 if limit is not None else None,
            processes=self._processes(nvml, handle),
            health=self._health(nvml, handle, index),
        )

    def _processes(self, nvml: ModuleType, handle: Any) -> tuple[GpuProcess, ...]:
        found: dict[int, GpuProcess] = {}
        queries: list[tuple[Literal["compute", "graphics"], str]] = [
            ("compute", "nvmlDeviceGetComputeRunningProcesses"),
            ("graphics", "nvmlDeviceGetGraphicsRunningProcesses"),
        ]
        for kind, function in queries:
            query = getattr(nvml, function, None)
            if query is None:
                continue
            for info in self._optional(partial(query, handle)) or ():
                pid = int(info.pid)
                if pid in found:  # a process with both contexts is listed twice
                    continue
                found[pid] = GpuProcess(
                    pid=pid,
                    used_memory_mib=_process_memory_mib(nvml, info),
                    kind=kind,
                    name=_process_name(pid),
                )
        return tuple(found.values())

    def _health(self, nvml: ModuleType, handle: Any, index: int) -> GpuHealth:
        uncorrected = getattr(nvml, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1)
        volatile = self._optional(
            lambda: nvml.nvmlDeviceGetTotalEccErrors(
                handle,
                uncorrected,
                getattr(nvml, "NVML_VOLATILE_ECC", 0),
            ),
        )
        aggregate = self._optional(
            lambda: nvml.nvmlDeviceGetTotalEccErrors(
                handle,
                uncorrected,
                getattr(nvml, "NVML_AGGREGATE_ECC", 1),
            ),
        )
        pending = self._optional(lambda: nvml.nvmlDeviceGetRetiredPagesPendingStatus(handle))
        enabled = getattr(nvml, "NVML_FEATURE_ENABLED", 1)
        remap_rows = getattr(nvml, "nvmlDeviceGetRemappedRows", None)
        remap = self._optional(lambda: remap_rows(handle)) if remap_rows else None
        reasons = self._optional(lambda: _throttle_reasons(nvml, handle))
        return GpuHealth(
            ecc_volatile_uncorrected=int(volatile) if volatile is not None else None,
            ecc_aggregate_uncorrected=int(aggregate) if aggregate is not None else None,
            retired_pages_pending=(int(pending) == enabled) if pending is not None else None,
            xid_events=tuple(self._xids.get(index, ())),
            remapped_rows_pending=bool(remap[2]) if remap is not None else None,
            remapping_failed=bool(remap[3]) if remap is not None else None,
            throttled=throttle_names(int(reasons)) if reasons is not None else (),
        )

    def _register_xid_events(self, nvml: ModuleType) -> None:
        """Xid errors (the driver's "this GPU misbehaved" codes) arrive as events, not
        counters, so they are collected into a short per-GPU history at each snapshot."""
        if not hasattr(nvml, "nvmlEventSetCreate"):
            return
        event_set = self._optional(nvml.nvmlEventSetCreate)
        if event_set is None:
            return
        xid_type = getattr(nvml, "nvmlEventTypeXidCriticalError", 0x8)
        registered = False
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            self._uuid_index[_text(nvml.nvmlDeviceGetUUID(handle))] = index
            try:
                nvml.nvmlDeviceRegisterEvents(handle, xid_type, event_set)
            except Exception as exc:
                if not self._is_nvml_error(exc):
                    raise
                continue
            registered = True
        if registered:
            self._event_set = event_set
        elif hasattr(nvml, "nvmlEventSetFree"):
            self._optional(partial(nvml.nvmlEventSetFree, event_set))

    def _drain_xid_events(self, nvml: ModuleType) -> None:
        if self._event_set is None:
            return
        wait = getattr(nvml, "nvmlEventSetWait_v2", None) or getattr(nvml, "nvmlEventSetWait", None)
        if wait is None:
            return
        for _ in range(256):  # bounded: a storm of events must not stall the heartbeat
            data = self._optional(lambda: wait(self._event_set, 0))
            if data is None:
                return
            index = self._event_gpu_index(nvml, data.device)
            if index is None:
                continue
            history = self._xids.setdefault(index, deque(maxlen=_XID_HISTORY))
            history.append(XidEvent(xid=int(data.eventData), at=datetime.now(UTC)))

    def _event_gpu_index(self, nvml: ModuleType, device: Any) -> int | None:
        uuid = self._optional(lambda: _text(nvml.nvmlDeviceGetUUID(device)))
        return self._uuid_index.get(uuid) if uuid is not None else None

    def close(self) -> None:
        with self._lock:
            if not self._initialised or self._nvml is None:
                return
            nvml = self._nvml
            if self._event_set is not None and hasattr(nvml, "nvmlEventSetFree"):
                self._optional(lambda: nvml.nvmlEventSetFree(self._event_set))
                self._event_set = None
            self._optional(nvml.nvmlShutdown)
            self._initialised = False


#: NVML's clock-throttle reason bits that mean the hardware protects itself.
_HW_THERMAL: Final = 0x40
_HW_POWER_BRAKE: Final = 0x80


def _throttle_reasons(nvml: ModuleType, handle: Any) -> int | None:
    """The current clock-throttle bitmask (named "event reasons" in newer drivers)."""
    for name in (
        "nvmlDeviceGetCurrentClocksEventReasons",
        "nvmlDeviceGetCurrentClocksThrottleReasons",
    ):
        read = getattr(nvml, name, None)
        if read is not None:
            return int(read(handle))
    return None


def throttle_names(mask: int) -> tuple[str, ...]:
    """The hardware slowdowns in a throttle bitmask: ``thermal``, ``power_brake``."""
    names = []
    if mask & _HW_THERMAL:
        names.append("thermal")
    if mask & _HW_POWER_BRAKE:
        names.append("power_brake")
    return tuple(names)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _cuda_version(value: object) -> str | None:
    """NVML gives CUDA's version as 12040 for 12.4."""
    if not isinstance(value, int):
        return None
    return f"{value // 1000}.{value % 1000 // 10}"


def _process_memory_mib(nvml: ModuleType, info: Any) -> int | None:
    used = getattr(info, "usedGpuMemory", None)
    not_available = getattr(nvml, "NVML_VALUE_NOT_AVAILABLE_ulonglong", None)
    if used is None or (not_available is not None and used == getattr(not_available, "value", -1)):
        return None
    return int(used) // _MIB


def _process_name(pid: int) -> str | None:
    try:
        return psutil.Process(pid).name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


# --- simulated --------------------------------------------------------------------------------


class FakeInventory:
    """GPUs for ``--simulate-gpus N``, whose usage follows the jobs this runner starts.

    The supervisor registers each job's process tree (``GpuProcessRegistry``); the fake
    cards then list those processes with ``per_process_mib`` each (the tree's leaves, the
    workers, spread over the job's GPUs, as one trainer rank per card does), so the
    scheduler sees a busy card exactly as it would with NVML. ``add_foreign_process``
    puts a process this runner did not start on a card, to exercise the "foreign" rule.
    """

    def __init__(
        self,
        gpu_count: int,
        *,
        output_root: str | Path = ".",
        name: str = "Simulated A100-SXM4-80GB",
        memory_mib: int = 81920,
        per_process_mib: int = 20480,
    ) -> None:
        if gpu_count < 0:
            raise ValueError("gpu_count must be >= 0")
        self.gpu_count = gpu_count
        self.output_root = Path(output_root)
        self.name = name
        self.memory_mib = memory_mib
        self.per_process_mib = per_process_mib
        self._tracked: dict[str, tuple[int, tuple[int, ...]]] = {}
        self._foreign: dict[int, list[GpuProcess]] = {}
        self._xids: dict[int, list[XidEvent]] = {}
        self._lock = threading.Lock()
        #: The simulator writes ``<uuid>`` files here (holding an Xid) to fault a card.
        self.fault_dir = self.output_root / SIM_FAULT_DIR

    def uuid(self, index: int) -> str:
        return f"GPU-5ea7ed00-0000-4000-8000-{index:012d}"

    def track(self, key: str, root_pid: int, gpu_ids: Sequence[int]) -> None:
        with self._lock:
            self._tracked[key] = (root_pid, tuple(gpu_ids))

    def untrack(self, key: str) -> None:
        with self._lock:
            self._tracked.pop(key, None)

    def add_foreign_process(self, gpu_index: int, pid: int, used_memory_mib: int) -> None:
        with self._lock:
            self._foreign.setdefault(gpu_index, []).append(
                GpuProcess(pid=pid, used_memory_mib=used_memory_mib, name="foreign"),
            )

    def add_xid(self, gpu_index: int, xid: int) -> None:
        """Report an Xid on a simulated card, as the driver would on a real one."""
        with self._lock:
            self._xids.setdefault(gpu_index, []).append(XidEvent(xid=xid, at=datetime.now(UTC)))

    def _collect_faults(self) -> None:
        """Take the Xids the simulator left in ``fault_dir`` (one file per faulted card)."""
        try:
            entries = list(self.fault_dir.iterdir())
        except OSError:
            return
        for entry in entries:
            index = next((i for i in range(self.gpu_count) if self.uuid(i) == entry.name), None)
            if index is None and entry.name.isdigit() and int(entry.name) < self.gpu_count:
                index = int(entry.name)  # CUDA_VISIBLE_DEVICES by index
            try:
                text = entry.read_text(encoding="utf-8").strip()
                entry.unlink()
            except OSError:
                continue
            if index is not None and text.isdigit():
                self.add_xid(index, int(text))

    def _job_processes(self) -> dict[int, list[GpuProcess]]:
        per_gpu: dict[int, list[GpuProcess]] = {}
        for root_pid, gpu_ids in self._tracked.values():
            workers = _leaf_processes(root_pid)
            if not workers or not gpu_ids:
                continue
            for rank, proc in enumerate(workers):
                gpu = gpu_ids[rank % len(gpu_ids)]
                per_gpu.setdefault(gpu, []).append(
                    GpuProcess(pid=proc[0], used_memory_mib=self.per_process_mib, name=proc[1]),
                )
        return per_gpu

    def snapshot(self) -> InventorySnapshot:
        self._collect_faults()
        with self._lock:
            jobs = self._job_processes()
            foreign = {k: list(v) for k, v in self._foreign.items()}
            xids = {k: tuple(v) for k, v in self._xids.items()}
        gpus = []
        for index in range(self.gpu_count):
            processes = tuple(jobs.get(index, []) + foreign.get(index, []))
            used = min(sum(p.used_memory_mib or 0 for p in processes), self.memory_mib)
            busy = bool(processes)
            gpus.append(
                GpuInfo(
                    index=index,
                    uuid=self.uuid(index),
                    name=self.name,
                    memory_total_mib=self.memory_mib,
                    memory_used_mib=used,
                    utilization_pct=97 if busy else 0,
                    memory_utilization_pct=60 if busy else 0,
                    temperature_c=71 if busy else 34,
                    power_draw_w=380.0 if busy else 62.0,
                    power_limit_w=400.0,
                    processes=processes,
                    health=GpuHealth(
                        ecc_volatile_uncorrected=0,
                        ecc_aggregate_uncorrected=0,
                        retired_pages_pending=False,
                        xid_events=xids.get(index, ()),
                    ),
                ),
            )
        return InventorySnapshot(
            taken_at=datetime.now(UTC),
            source="simulated",
            host=host_info(self.output_root),
            gpus=tuple(gpus),
            driver_version="simulated",
            cuda_driver_version="12.4",
        )

    def close(self) -> None:
        return None


def _leaf_processes(root_pid: int) -> list[tuple[int, str | None]]:
    """The workers of a job tree: its processes without children, oldest first."""
    try:
        root = psutil.Process(root_pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    leaves: list[tuple[float, int, str | None]] = []
    for proc in tree:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE or proc.children():
                continue
            leaves.append((proc.create_time(), proc.pid, proc.name()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    leaves.sort()
    return [(pid, name) for _, pid, name in leaves]
