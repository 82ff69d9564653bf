"""GPU inventory: the simulated cards, NVML without a driver, and the NVML-to-struct mapping."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import msgspec
import pytest

from swift_trainer.core.inventory import GpuHealth, XidEvent
from swift_trainer.runner.gpu_probe import (
    FakeInventory,
    GpuInfo,
    GpuProcess,
    InventorySnapshot,
    NvmlInventory,
    foreign_memory_mib,
    foreign_processes,
    process_tree_pids,
    throttle_names,
)

GIB = 1024**3


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_fake_inventory_defaults(tmp_path: Path) -> None:
    inventory = FakeInventory(2, output_root=tmp_path)
    snapshot = inventory.snapshot()
    assert snapshot.source == "simulated"
    assert snapshot.error is None
    assert [g.index for g in snapshot.gpus] == [0, 1]
    gpu = snapshot.gpus[0]
    assert gpu.name == "Simulated A100-SXM4-80GB"
    assert gpu.memory_total_mib == 81920
    assert gpu.memory_used_mib == 0
    assert gpu.memory_free_mib == 81920
    assert gpu.processes == ()
    assert not gpu.health.suspect
    assert len({g.uuid for g in snapshot.gpus}) == 2
    assert inventory.snapshot().gpus[1].uuid == snapshot.gpus[1].uuid  # stable across calls
    custom = FakeInventory(1, name="Simulated H100", memory_mib=1000, output_root=tmp_path)
    assert custom.snapshot().gpus[0].name == "Simulated H100"
    with pytest.raises(ValueError, match="gpu_count"):
        FakeInventory(-1)
    # a snapshot is plain data the heartbeat can put on the wire
    decoded = msgspec.json.decode(msgspec.json.encode(snapshot), type=InventorySnapshot)
    assert decoded == snapshot
    inventory.close()


def test_fake_inventory_shows_tracked_processes_as_used_memory(
    tmp_path: Path,
    sleeper: subprocess.Popen[bytes],
) -> None:
    inventory = FakeInventory(3, output_root=tmp_path, per_process_mib=30000)
    inventory.track("job:a", sleeper.pid, [2])
    gpus = inventory.snapshot().gpus
    assert [p.pid for p in gpus[2].processes] == [sleeper.pid]
    assert gpus[2].memory_used_mib == 30000
    assert gpus[2].utilization_pct == 97
    assert gpus[0].processes == ()
    own = process_tree_pids([sleeper.pid])
    assert foreign_processes(gpus[2], own) == ()
    inventory.add_foreign_process(0, 999_999, 5000)
    gpu0 = inventory.snapshot().gpus[0]
    assert foreign_memory_mib(gpu0, own) == 5000
    inventory.untrack("job:a")
    assert inventory.snapshot().gpus[2].processes == ()


def test_a_dead_tracked_process_frees_its_card(tmp_path: Path) -> None:
    inventory = FakeInventory(1, output_root=tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    inventory.track("job:gone", proc.pid, [0])
    assert inventory.snapshot().gpus[0].memory_used_mib == 0


def test_foreign_usage_helpers() -> None:
    gpu = GpuInfo(
        index=0,
        uuid="GPU-x",
        name="x",
        memory_total_mib=1000,
        memory_used_mib=900,
        processes=(
            GpuProcess(pid=1, used_memory_mib=300),
            GpuProcess(pid=2, used_memory_mib=200),
            GpuProcess(pid=3, used_memory_mib=None),
        ),
    )
    assert [p.pid for p in foreign_processes(gpu, {1})] == [2, 3]
    # pid 3's memory is unknown: what our own processes do not explain is foreign
    assert foreign_memory_mib(gpu, {1}) == 600
    assert foreign_memory_mib(gpu, {1, 3}) == 200
    assert foreign_memory_mib(gpu, {1, 2, 3}) == 0
    assert process_tree_pids([os.getpid(), 999_999_999]) >= {os.getpid()}


# --- NVML -------------------------------------------------------------------------------------


def test_without_the_nvml_library_the_snapshot_says_so(tmp_path: Path) -> None:
    """This machine has no GPU driver: the real pynvml cannot load libnvidia-ml."""
    inventory = NvmlInventory(tmp_path)
    snapshot = inventory.snapshot()
    if snapshot.gpus:  # pragma: no cover - a machine with a real driver
        pytest.skip("NVML is available here")
    assert snapshot.source == "nvml"
    assert snapshot.gpus == ()
    assert snapshot.error is not None
    assert snapshot.error.startswith("NVML unavailable")
    assert "NVMLError" in snapshot.error
    assert snapshot.host.cpu_count >= 1  # the host part is still reported
    assert inventory.available is False
    inventory.close()


def test_without_pynvml_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    inventory = NvmlInventory(tmp_path)
    snapshot = inventory.snapshot()
    assert snapshot.gpus == ()
    assert snapshot.error is not None
    assert "cannot import pynvml" in snapshot.error
    assert inventory.available is False


class FakeNvml(ModuleType):
    """Just enough of pynvml's surface, with the behaviours of real cards."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):  # noqa: N801
        pass

    class NVMLError_Timeout(NVMLError):  # noqa: N801
        pass

    class NVMLError_DriverNotLoaded(NVMLError):  # noqa: N801
        pass

    NVML_TEMPERATURE_GPU = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_AGGREGATE_ECC = 1
    NVML_FEATURE_ENABLED = 1
    nvmlEventTypeXidCriticalError = 8  # noqa: N815

    def __init__(self, own_pid: int) -> None:
        super().__init__("pynvml")
        self.own_pid = own_pid
        self.init_failures = 0
        self.events: list[SimpleNamespace] = []
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_failures:
            self.init_failures -= 1
            raise self.NVMLError_DriverNotLoaded("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimpleNamespace:
        return SimpleNamespace(index=index)

    def nvmlDeviceGetUUID(self, handle: Any) -> Any:
        uuid = f"GPU-0000-{handle.index}"
        return uuid.encode() if handle.index == 0 else uuid  # old pynvml returned bytes

    def nvmlDeviceGetName(self, handle: Any) -> bytes:
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> SimpleNamespace:
        used = 30 * GIB if handle.index == 0 else 0
        return SimpleNamespace(total=80 * GIB, used=used, free=80 * GIB - used)

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> SimpleNamespace:
        if handle.index == 1:
            raise self.NVMLError_NotSupported("Not Supported")
        return SimpleNamespace(gpu=88, memory=41)

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        return 64

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return 412_345  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        return 700_000

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[SimpleNamespace]:
        if handle.index == 1:
            return []
        return [
            SimpleNamespace(pid=self.own_pid, usedGpuMemory=20 * GIB),
            SimpleNamespace(pid=4242, usedGpuMemory=None),
        ]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Any) -> list[SimpleNamespace]:
        if handle.index == 1:
            raise self.NVMLError_NotSupported("Not Supported")
        return [SimpleNamespace(pid=self.own_pid, usedGpuMemory=20 * GIB)]  # listed twice

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, error_type: int, counter: int) -> int:
        if handle.index == 1:
            raise self.NVMLError_NotSupported("Not Supported")
        return 2 if counter == self.NVML_VOLATILE_ECC else 7

    def nvmlDeviceGetRetiredPagesPendingStatus(self, handle: Any) -> int:
        if handle.index == 1:
            raise self.NVMLError_NotSupported("Not Supported")
        return 1

    def nvmlEventSetCreate(self) -> str:
        return "event-set"

    def nvmlDeviceRegisterEvents(self, handle: Any, types: int, event_set: str) -> None:
        if handle.index == 1:
            raise self.NVMLError_NotSupported("Not Supported")

    def nvmlEventSetWait_v2(self, event_set: str, timeout_ms: int) -> SimpleNamespace:
        if not self.events:
            raise self.NVMLError_Timeout("Timeout")
        return self.events.pop(0)

    def nvmlEventSetFree(self, event_set: str) -> None:
        pass


def test_nvml_mapping_to_structs(tmp_path: Path) -> None:
    nvml = FakeNvml(own_pid=os.getpid())
    inventory = NvmlInventory(tmp_path, nvml=nvml)
    nvml.events.append(SimpleNamespace(device=SimpleNamespace(index=0), eventData=79))
    snapshot = inventory.snapshot()
    assert snapshot.error is None
    assert snapshot.driver_version == "550.54.15"
    assert snapshot.cuda_driver_version == "12.4"
    first, second = snapshot.gpus
    assert first.uuid == "GPU-0000-0"
    assert first.name == "NVIDIA H100 80GB HBM3"
    assert (first.memory_total_mib, first.memory_used_mib) == (81920, 30720)
    assert (first.utilization_pct, first.memory_utilization_pct) == (88, 41)
    assert first.temperature_c == 64
    assert first.power_draw_w == pytest.approx(412.345)
    assert first.power_limit_w == 700.0
    assert [(p.pid, p.used_memory_mib, p.kind) for p in first.processes] == [
        (os.getpid(), 20480, "compute"),
        (4242, None, "compute"),
    ]
    assert first.processes[0].name  # our own process has a name psutil can read
    assert first.health.ecc_volatile_uncorrected == 2
    assert first.health.ecc_aggregate_uncorrected == 7
    assert first.health.retired_pages_pending is True
    assert [e.xid for e in first.health.xid_events] == [79]
    assert first.health.suspect
    # the second card supports none of the optional queries: it is still listed
    assert second.uuid == "GPU-0000-1"
    assert second.utilization_pct is None
    assert second.health.ecc_volatile_uncorrected is None
    assert second.health.retired_pages_pending is None
    assert second.processes == ()
    assert foreign_memory_mib(first, {os.getpid()}) == 30720 - 20480
    # xid history is kept across snapshots
    assert [e.xid for e in inventory.snapshot().gpus[0].health.xid_events] == [79]
    inventory.close()
    assert nvml.shutdowns == 1


def test_nvml_init_failure_is_reported_and_retried(tmp_path: Path) -> None:
    nvml = FakeNvml(own_pid=os.getpid())
    nvml.init_failures = 1
    inventory = NvmlInventory(tmp_path, nvml=nvml)
    failed = inventory.snapshot()
    assert failed.gpus == ()
    assert failed.error == "NVML unavailable: NVMLError_DriverNotLoaded: Driver Not Loaded"
    recovered = inventory.snapshot()
    assert recovered.error is None
    assert len(recovered.gpus) == 2
    assert inventory.available is True


def test_a_bug_is_not_mistaken_for_a_missing_feature(tmp_path: Path) -> None:
    nvml = FakeNvml(own_pid=os.getpid())

    def broken(handle: Any) -> int:
        raise ZeroDivisionError("bug")

    nvml.nvmlDeviceGetPowerUsage = broken  # type: ignore[method-assign]
    with pytest.raises(ZeroDivisionError):
        NvmlInventory(tmp_path, nvml=nvml).snapshot()


def test_a_lost_gpu_does_not_hide_the_others(tmp_path: Path) -> None:
    nvml = FakeNvml(own_pid=os.getpid())
    original = nvml.nvmlDeviceGetMemoryInfo

    def lost(handle: Any) -> SimpleNamespace:
        if handle.index == 1:
            raise nvml.NVMLError("GPU is lost")
        return original(handle)

    nvml.nvmlDeviceGetMemoryInfo = lost  # type: ignore[method-assign]
    snapshot = NvmlInventory(tmp_path, nvml=nvml).snapshot()
    assert [g.index for g in snapshot.gpus] == [0]
    assert snapshot.error == "GPU 1: NVMLError: GPU is lost"


class RemappingNvml(FakeNvml):
    """A card with a pending row remap and a hardware thermal slowdown (GPU 0 only)."""

    def nvmlDeviceGetRemappedRows(self, handle: Any) -> tuple[int, int, int, int]:
        if handle.index == 1:
            raise self.NVMLError_NotSupported("Not Supported")
        return (0, 2, 1, 0)  # corrected, uncorrected, pending, failure

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        return 0x40 | 0x1 if handle.index == 0 else 0x4  # thermal + idle; power cap only


def test_remapped_rows_and_hardware_slowdowns_are_health_problems(tmp_path: Path) -> None:
    inventory = NvmlInventory(tmp_path, nvml=RemappingNvml(own_pid=os.getpid()))
    first, second = inventory.snapshot().gpus
    assert first.health.remapped_rows_pending is True
    assert first.health.remapping_failed is False
    assert first.health.throttled == ("thermal",)
    assert "remapped rows wait for a reset" in first.health.problems
    assert "thermal slowdown" in first.health.problems
    # Unsupported remapping and a software power cap: nothing to hold against the card.
    assert second.health.remapped_rows_pending is None
    assert second.health.throttled == ()
    assert not second.health.suspect
    inventory.close()


def test_throttle_names_read_the_hardware_bits_only() -> None:
    assert throttle_names(0x40 | 0x80 | 0x4 | 0x20) == ("thermal", "power_brake")
    assert throttle_names(0) == ()


def test_application_xids_do_not_make_a_card_suspect() -> None:
    now = datetime.now(UTC)
    assert not GpuHealth(xid_events=(XidEvent(xid=13, at=now),)).suspect
    assert GpuHealth(xid_events=(XidEvent(xid=48, at=now),)).problems == ("Xid 48",)
