"""What the scheduler knows about GPUs and the jobs holding them, as plain immutable values.

Runners report ``HostSnapshot``s; the event stream yields ``RunningJob``s. Both are inputs
only: the placement core never asks a runner anything, so the same snapshots always give the
same decisions, and a replayed stream rebuilds the same assignments. Which of them a job
may use, and which it gets, is decided in ``gpu_choice``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import msgspec

from swift_trainer.core.gang import RankPlacement


class GpuSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """One GPU as its runner last saw it.

    ``foreign_memory_mib`` is memory held by processes this system did not start; the runner
    tells them apart from its own children, the scheduler only compares it to a threshold.
    ``nvlink_group`` and ``pcie_switch`` are opaque ids: GPUs sharing one talk faster.
    """

    index: int
    uuid: str
    name: str
    memory_total_mib: int
    memory_used_mib: int = 0
    foreign_memory_mib: int = 0
    utilization_pct: float = 0.0
    healthy: bool = True
    nvlink_group: str | None = None
    pcie_switch: str | None = None

    @property
    def memory_free_mib(self) -> int:
        return self.memory_total_mib - self.memory_used_mib


class HostSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A runner and its GPUs; ``alive`` is the caller's verdict, the lease a deadline for it."""

    runner_id: str
    gpus: tuple[GpuSnapshot, ...] = ()
    alive: bool = True
    lease_expires_at: datetime | None = None
    #: The runner's host labels (``runner --label KEY=VALUE``), matched by ``host_labels``.
    labels: dict[str, str] = {}

    def is_live(self, now: datetime) -> bool:
        """Alive and still within its lease: the clock is a parameter so the core stays pure."""
        return self.alive and (self.lease_expires_at is None or now < self.lease_expires_at)


class RunningJob(msgspec.Struct, frozen=True, kw_only=True):
    """A job holding GPUs (scheduled, running or stopping).

    ``remaining_s`` is swift's own estimate at the last progress report; ``None`` means
    unknown, which the scheduler treats as "not before the far future". ``owner`` is whose
    GPUs these are, for quotas and fair share.
    """

    job_id: str
    runner_id: str
    gpu_ids: tuple[int, ...]
    remaining_s: float | None = None
    priority: int = 0
    owner: str | None = None
    #: A multi-node job's ranks past rank 0, each holding GPUs on its own runner.
    peers: tuple[RankPlacement, ...] = ()


def live_hosts(hosts: Iterable[HostSnapshot], now: datetime) -> list[HostSnapshot]:
    """The hosts a placement may use at ``now``; a runner past its lease gets no new work."""
    return [host for host in hosts if host.is_live(now)]
