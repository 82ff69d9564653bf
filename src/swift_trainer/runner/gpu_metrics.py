"""Prometheus gauges of this runner's GPUs, read from NVML at every heartbeat.

Each runner exports its own GPUs' readings (on ``--metrics-port``, or on the API port in the
embedded mode), as a node exporter would, so a dashboard shows utilisation, memory,
temperature and power per host without the API decoding heartbeats.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Gauge

from ..core.inventory import InventorySnapshot, RunnerHeartbeat
from .agent import RunnerAgent

_LABELS: Final = ["runner", "gpu", "name"]
_MIB: Final = 1024 * 1024

GPU_UTILIZATION: Final = Gauge(
    "swift_trainer_gpu_utilization_ratio", "GPU busy ratio (NVML, 0-1).", _LABELS
)
GPU_MEMORY_USED: Final = Gauge(
    "swift_trainer_gpu_memory_used_bytes", "GPU memory in use (NVML).", _LABELS
)
GPU_MEMORY_TOTAL: Final = Gauge(
    "swift_trainer_gpu_memory_total_bytes", "GPU memory size (NVML).", _LABELS
)
GPU_TEMPERATURE: Final = Gauge(
    "swift_trainer_gpu_temperature_celsius", "GPU temperature (NVML).", _LABELS
)
GPU_POWER: Final = Gauge("swift_trainer_gpu_power_watts", "GPU power draw (NVML).", _LABELS)


def observe_gpus(runner_id: str, snapshot: InventorySnapshot) -> None:
    for gpu in snapshot.gpus:
        labels = {"runner": runner_id, "gpu": str(gpu.index), "name": gpu.name}
        GPU_MEMORY_USED.labels(**labels).set(gpu.memory_used_mib * _MIB)
        GPU_MEMORY_TOTAL.labels(**labels).set(gpu.memory_total_mib * _MIB)
        if gpu.utilization_pct is not None:
            GPU_UTILIZATION.labels(**labels).set(gpu.utilization_pct / 100)
        if gpu.temperature_c is not None:
            GPU_TEMPERATURE.labels(**labels).set(gpu.temperature_c)
        if gpu.power_draw_w is not None:
            GPU_POWER.labels(**labels).set(gpu.power_draw_w)


class MeteredRunnerAgent(RunnerAgent):
    """The runner agent; every heartbeat it builds also updates this runner's GPU gauges."""

    async def heartbeat(self) -> RunnerHeartbeat:
        beat = await super().heartbeat()
        observe_gpus(self.runner_id, beat.inventory)
        return beat
