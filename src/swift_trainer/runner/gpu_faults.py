"""Which of a run's GPUs misbehaved while it ran, read from an inventory snapshot.

The classifier trusts NVML over the log: a card that reported an Xid or uncorrected
memory errors during the run is the cause, whatever the process printed on its way down.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import UTC, datetime

import msgspec

from ..core.inventory import InventorySnapshot
from .failure_classifier import GpuFault
from .gpu_probe import GpuInventory


def faults_on(
    snapshot: InventorySnapshot, gpu_ids: Collection[int], since: datetime
) -> tuple[GpuFault, ...]:
    """Faults on ``gpu_ids``: Xids from ``since`` on, and memory errors still standing.

    Slowdowns (thermal, power brake) are left out: they slow a run, they do not end it.
    """
    found: list[GpuFault] = []
    for gpu in snapshot.gpus:
        if gpu.index not in gpu_ids:
            continue
        health = msgspec.structs.replace(
            gpu.health,
            xid_events=tuple(x for x in gpu.health.xid_events if x.at >= since),
            throttled=(),
        )
        found.extend(GpuFault(uuid=gpu.uuid, reason=reason) for reason in health.problems)
    return tuple(found)


def fault_reader(
    inventory: GpuInventory,
) -> Callable[[tuple[int, ...], float], tuple[GpuFault, ...]]:
    """A ``Supervisor.gpu_faults`` that takes a fresh snapshot of ``inventory``."""

    def read(gpu_ids: tuple[int, ...], started_at: float) -> tuple[GpuFault, ...]:
        since = datetime.fromtimestamp(started_at, UTC)
        return faults_on(inventory.snapshot(), gpu_ids, since)

    return read
