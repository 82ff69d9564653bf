"""Every rule that decides which GPUs a job may use and which it gets, in one place.

A scheduler reads a runner's heartbeat as a ``HostSnapshot`` (``host_snapshot``: a draining
runner takes no new work, a suspect GPU counts as unhealthy). A GPU is *usable* when it is
healthy, on a live runner and its foreign memory (held by processes this system did not
start) is below the policy's threshold (``is_usable``); it *matches* a job when it meets the
job's ``min_gpu_memory_gb`` and ``gpu_name`` (``gpu_matches``). Among hosts with enough free
matching GPUs the tightest fit wins, ties to the lowest runner id (``Occupancy.fit_host``
indexes that rule); within the host, ``select_gpus`` picks the GPUs. ``placement`` orders
the jobs; the runner re-checks the GPUs it is given before it starts anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Final, NamedTuple

from swift_trainer.core.inventory import RunnerHeartbeat

from .gpu_snapshots import GpuSnapshot, HostSnapshot

#: Host labels a job asks for, as sorted ``(key, value)`` pairs.
HostLabels = tuple[tuple[str, str], ...]


class Requirement(NamedTuple):
    """What a job asks of each GPU, of each host, and how many hosts; normalised so that
    equal constraints share one index entry."""

    min_gb: float
    #: A lower-cased fragment of the GPU name ("" for any).
    fragment: str
    labels: HostLabels
    nodes: int
    #: UUIDs of cards that failed this job before.
    excluded: frozenset[str]


#: Asks for nothing.
ANY_GPU: Final = Requirement(0.0, "", (), 1, frozenset())
#: How GPUs of one host rank for a job: lower is better (see ``gpu_preference``).
GpuPreference = tuple[int, float, int]

_BYTES_PER_MIB: Final = 1 << 20
_BYTES_PER_GB: Final = 10**9


def host_snapshot(heartbeat: RunnerHeartbeat, seen_at: datetime | None = None) -> HostSnapshot:
    """What placement needs from a heartbeat; a draining runner takes no new work.

    The lease runs ``lease_s`` from ``seen_at`` (default: the heartbeat's own ``at``).
    """
    foreign = heartbeat.foreign_memory_mib
    return HostSnapshot(
        runner_id=heartbeat.runner_id,
        gpus=tuple(
            GpuSnapshot(
                index=gpu.index,
                uuid=gpu.uuid,
                name=gpu.name,
                memory_total_mib=gpu.memory_total_mib,
                memory_used_mib=gpu.memory_used_mib,
                foreign_memory_mib=foreign.get(gpu.index, 0),
                utilization_pct=float(gpu.utilization_pct or 0),
                healthy=not gpu.health.suspect,
            )
            for gpu in heartbeat.inventory.gpus
        ),
        alive=not heartbeat.draining,
        lease_expires_at=(seen_at or heartbeat.at) + timedelta(seconds=heartbeat.lease_s),
        labels=dict(heartbeat.labels),
    )


def is_usable(gpu: GpuSnapshot, foreign_memory_threshold_mib: int) -> bool:
    """Healthy and not taken by foreign processes (the host's liveness is checked apart)."""
    return gpu.healthy and gpu.foreign_memory_mib < foreign_memory_threshold_mib


def placement_signature(host: HostSnapshot | None, threshold: int) -> object:
    """What of a host matters to placement; volatile readings (utilisation) left out, so a
    heartbeat that changes only those does not wake the placer."""
    if host is None:
        return None
    return (
        host.alive,
        tuple(sorted(host.labels.items())),
        tuple(
            (
                g.index,
                g.uuid,
                g.name,
                g.memory_total_mib,
                g.healthy,
                g.foreign_memory_mib >= threshold,
            )
            for g in host.gpus
        ),
    )


def requirement_of(
    min_gpu_memory_gb: float | None,
    gpu_name: str | None,
    host_labels: Mapping[str, str] | None = None,
    nodes: int = 1,
    excluded_gpus: Iterable[str] = (),
) -> Requirement:
    """Normalise a job's constraints so that equal constraints share one index entry.

    ``excluded_gpus`` are the UUIDs of cards that failed this job before.
    """
    labels = tuple(sorted((host_labels or {}).items()))
    return Requirement(
        float(min_gpu_memory_gb or 0.0),
        (gpu_name or "").lower(),
        labels,
        nodes,
        frozenset(excluded_gpus),
    )


def host_matches(labels: Mapping[str, str], requirement: Requirement) -> bool:
    """Whether a host carries every label the job asks for."""
    return all(labels.get(key) == value for key, value in requirement.labels)


def shared_labels(a: Mapping[str, str], b: Mapping[str, str]) -> int:
    """How many labels two hosts have in common (same key, same value)."""
    return sum(1 for key, value in a.items() if b.get(key) == value)


def gpu_matches(gpu: GpuSnapshot, requirement: Requirement) -> bool:
    """Whether a GPU meets a job's constraints, whatever it is doing right now.

    Memory is compared in decimal gigabytes against NVML's MiB total, because that is how
    cards are sold: an "80GB" H100 reports 81559 MiB, which is 85.5 GB but only 79.6 GiB, and a
    user asking for 80 GB means that card.
    """
    min_gb, fragment, excluded = requirement.min_gb, requirement.fragment, requirement.excluded
    if min_gb and gpu.memory_total_mib * _BYTES_PER_MIB < min_gb * _BYTES_PER_GB:
        return False
    if gpu.uuid in excluded:
        return False
    return not fragment or fragment in gpu.name.lower()


def describe_requirement(requirement: Requirement) -> str:
    """The constraint in the words of the job spec, for reasons a user can act on."""
    min_gb, fragment, labels = requirement.min_gb, requirement.fragment, requirement.labels
    excluded = requirement.excluded
    parts = []
    if fragment:
        parts.append(f"named like {fragment!r}")
    if min_gb:
        parts.append(f"with at least {min_gb:g} GB")
    if labels:
        parts.append("on a runner labelled " + ",".join(f"{k}={v}" for k, v in labels))
    if excluded:
        parts.append(f"other than {', '.join(sorted(excluded))} (faulty for this job)")
    return (" " + " and ".join(parts)) if parts else ""


def gpu_preference(gpu: GpuSnapshot) -> GpuPreference:
    """Most free memory first, then least busy, then lowest index so ties stay deterministic."""
    return (-gpu.memory_free_mib, gpu.utilization_pct, gpu.index)


def select_gpus(candidates: Iterable[GpuSnapshot], count: int) -> tuple[int, ...]:
    """Choose ``count`` GPUs of one host for one job; the indices come back sorted.

    A single GPU is simply the preferred one. A gang of GPUs first looks for a set inside one
    NVLink group, then inside one PCIe switch, and only then takes the preferred GPUs
    wherever they sit: a data-parallel job runs at the speed of its slowest link, so a
    faster interconnect matters more than a few MiB of free memory on an idle GPU. Among the
    groups that can hold the whole gang, the one whose GPUs rank best wins.
    """
    ranked = sorted(candidates, key=gpu_preference)
    if count > len(ranked):
        raise ValueError(f"cannot choose {count} GPUs out of {len(ranked)}")
    chosen = ranked[:count]
    if count >= 2:
        for group_of in (_nvlink_group, _pcie_switch):
            groups: dict[str, list[GpuSnapshot]] = {}
            for gpu in ranked:
                group = group_of(gpu)
                if group is not None:
                    groups.setdefault(group, []).append(gpu)
            fitting = [members[:count] for members in groups.values() if len(members) >= count]
            if fitting:
                chosen = min(fitting, key=lambda members: [gpu_preference(g) for g in members])
                break
    return tuple(sorted(gpu.index for gpu in chosen))


def _nvlink_group(gpu: GpuSnapshot) -> str | None:
    return gpu.nvlink_group


def _pcie_switch(gpu: GpuSnapshot) -> str | None:
    return gpu.pcie_switch
