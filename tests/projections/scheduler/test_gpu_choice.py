"""Snapshots, leases, GPU constraints and the choice of GPUs within one host."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from swift_trainer.core.inventory import GpuInfo, HostInfo, InventorySnapshot, RunnerHeartbeat
from swift_trainer.projections.scheduler import live_hosts, select_gpus
from swift_trainer.projections.scheduler.gpu_choice import (
    describe_requirement,
    gpu_matches,
    host_snapshot,
    is_usable,
    placement_signature,
    requirement_of,
    shared_labels,
)

from .builders import A100_40, A100_40_MIB, gpu, host

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_host_is_live_until_its_lease_expires() -> None:
    leased = host("a", lease_expires_at=NOW + timedelta(seconds=30))
    assert leased.is_live(NOW)
    assert leased.is_live(NOW + timedelta(seconds=29))
    assert not leased.is_live(NOW + timedelta(seconds=30))
    assert host("b").is_live(NOW)  # no lease: alive until told otherwise
    assert not host("c", alive=False).is_live(NOW)


def test_live_hosts_filters_dead_and_expired_runners() -> None:
    hosts = [
        host("a"),
        host("b", alive=False),
        host("c", lease_expires_at=NOW - timedelta(seconds=1)),
        host("d", lease_expires_at=NOW + timedelta(seconds=1)),
    ]
    assert [h.runner_id for h in live_hosts(hosts, NOW)] == ["a", "d"]


def test_memory_is_compared_in_decimal_gigabytes() -> None:
    h100 = gpu(0)  # 81559 MiB = 85.5 GB = 79.6 GiB
    assert gpu_matches(h100, requirement_of(80, None))
    assert gpu_matches(h100, requirement_of(85, None))
    assert not gpu_matches(h100, requirement_of(86, None))
    a100 = gpu(0, name=A100_40, total=A100_40_MIB)
    assert gpu_matches(a100, requirement_of(40, None))
    assert not gpu_matches(a100, requirement_of(48, None))


def test_gpu_name_is_a_case_insensitive_substring() -> None:
    h100 = gpu(0)
    assert gpu_matches(h100, requirement_of(None, "h100"))
    assert gpu_matches(h100, requirement_of(None, "H100 80GB"))
    assert not gpu_matches(h100, requirement_of(None, "A100"))
    assert gpu_matches(h100, requirement_of(None, None))


def test_requirements_read_like_the_spec() -> None:
    assert describe_requirement(requirement_of(None, None)) == ""
    assert describe_requirement(requirement_of(80, "H100")) == (
        " named like 'h100' and with at least 80 GB"
    )
    labelled = requirement_of(
        None, None, {"zone": "b", "rack": "r1"}, excluded_gpus=("GPU-2", "GPU-1")
    )
    assert describe_requirement(labelled) == (
        " on a runner labelled rack=r1,zone=b and other than GPU-1, GPU-2 (faulty for this job)"
    )
    assert requirement_of(None, None).nodes == 1, "one runner unless the job asks for more"


def test_shared_labels_count_the_same_key_with_the_same_value() -> None:
    assert shared_labels({"zone": "b", "rack": "r1", "os": "x"}, {"zone": "b", "rack": "r1"}) == 2
    assert shared_labels({"zone": "b"}, {"zone": "c"}) == 0


def test_a_single_gpu_goes_to_the_most_free_memory() -> None:
    gpus = [gpu(0, used=4000), gpu(1, used=100), gpu(2, used=2000)]
    assert select_gpus(gpus, 1) == (1,)


def test_utilisation_breaks_memory_ties_then_index() -> None:
    gpus = [gpu(0, util=50), gpu(1, util=5), gpu(2, util=5), gpu(3, util=0, used=1)]
    assert select_gpus(gpus, 1) == (1,)
    assert select_gpus(gpus, 2) == (1, 2)


def test_a_gang_prefers_one_nvlink_group_over_free_memory() -> None:
    gpus = [
        gpu(0, nvlink="x", used=10),
        gpu(1, nvlink="y", used=0),
        gpu(2, nvlink="x", used=10),
        gpu(3, nvlink="z", used=0),
    ]
    assert select_gpus(gpus, 2) == (0, 2)


def test_a_gang_uses_the_pcie_switch_when_no_nvlink_group_fits() -> None:
    gpus = [
        gpu(0, pcie="s0", used=0),
        gpu(1, pcie="s1", used=0),
        gpu(2, pcie="s1", used=100),
        gpu(3, pcie="s0", used=100),
    ]
    # Without topology GPUs 0 and 1 would win on memory; they sit on different switches.
    assert select_gpus(gpus, 2) == (0, 3)


def test_the_best_ranked_group_wins_among_fitting_groups() -> None:
    gpus = [
        gpu(0, nvlink="x", used=500),
        gpu(1, nvlink="x", used=500),
        gpu(2, nvlink="y", used=0),
        gpu(3, nvlink="y", used=100),
    ]
    assert select_gpus(gpus, 2) == (2, 3)


def test_no_group_fits_falls_back_to_preference() -> None:
    gpus = [gpu(0, nvlink="x"), gpu(1, nvlink="y", used=9), gpu(2, nvlink="z")]
    assert select_gpus(gpus, 2) == (0, 2)


def test_topology_does_not_matter_for_one_gpu() -> None:
    gpus = [gpu(0, nvlink="x", used=5), gpu(1, nvlink="x", used=5), gpu(2, nvlink="y")]
    assert select_gpus(gpus, 1) == (2,)


def test_choosing_more_gpus_than_offered_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot choose 3 GPUs out of 2"):
        select_gpus([gpu(0), gpu(1)], 3)


def test_a_gpu_with_exactly_the_memory_asked_for_matches() -> None:
    exact = gpu(0, total=1_953_125)  # 2**20 * 1,953,125 bytes = 2048 GB exactly
    assert gpu_matches(exact, requirement_of(2048.0, None))
    assert not gpu_matches(exact, requirement_of(2048.5, None))


def test_a_gang_may_take_every_candidate_but_not_more() -> None:
    candidates = [gpu(0), gpu(1)]
    assert select_gpus(candidates, 2) == (0, 1)
    with pytest.raises(ValueError, match="cannot choose 3 GPUs out of 2"):
        select_gpus(candidates, 3)


def _heartbeat(*gpus: GpuInfo, draining: bool = False) -> RunnerHeartbeat:
    info = HostInfo(
        hostname="a",
        cpu_count=8,
        memory_total_bytes=1,
        memory_available_bytes=1,
        disk_path="/",
        disk_total_bytes=1,
        disk_free_bytes=1,
    )
    inventory = InventorySnapshot(taken_at=NOW, source="simulated", host=info, gpus=gpus)
    return RunnerHeartbeat(
        runner_id="a",
        at=NOW,
        lease_s=15.0,
        inventory=inventory,
        foreign_memory_mib={1: 700},
        draining=draining,
        labels={"zone": "b"},
    )


def test_a_heartbeat_becomes_the_snapshot_placement_reads() -> None:
    beat = _heartbeat(
        GpuInfo(0, "GPU-0", "NVIDIA H100", 81_559, 1_024, utilization_pct=37),
        GpuInfo(1, "GPU-1", "NVIDIA A100", 40_960, 0),
    )
    snapshot = host_snapshot(beat, seen_at=NOW + timedelta(seconds=5))
    first, second = snapshot.gpus
    assert (first.index, first.uuid, first.name) == (0, "GPU-0", "NVIDIA H100")
    assert (first.memory_total_mib, first.memory_used_mib) == (81_559, 1_024)
    assert (first.utilization_pct, first.foreign_memory_mib, first.healthy) == (37.0, 0, True)
    assert (second.utilization_pct, second.foreign_memory_mib) == (0.0, 700)
    assert snapshot.alive
    assert snapshot.lease_expires_at == NOW + timedelta(seconds=20)
    assert snapshot.labels == {"zone": "b"}
    assert not host_snapshot(_heartbeat(draining=True)).alive


def test_a_gpu_is_usable_when_healthy_and_below_the_foreign_memory_threshold() -> None:
    assert is_usable(gpu(0, foreign=499), 500)
    assert not is_usable(gpu(0, foreign=500), 500)
    assert not is_usable(gpu(0, healthy=False), 500)


def test_the_placement_signature_ignores_load_but_not_what_placement_reads() -> None:
    base = host("a", gpus=(gpu(0, util=10.0), gpu(1)))
    signature = placement_signature(base, 500)
    assert placement_signature(None, 500) is None
    assert signature is not None
    assert placement_signature(host("a", gpus=(gpu(0, util=90.0), gpu(1))), 500) == signature
    taken = host("a", gpus=(gpu(0, foreign=500), gpu(1)))
    assert placement_signature(taken, 500) != signature
    assert placement_signature(host("a", gpus=(gpu(0, foreign=499), gpu(1))), 500) == signature
