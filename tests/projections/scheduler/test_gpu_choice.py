"""Snapshots, leases, GPU constraints and the choice of GPUs within one host."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from swift_trainer.projections.scheduler import live_hosts, select_gpus
from swift_trainer.projections.scheduler.gpu_choice import (
    describe_requirement,
    gpu_matches,
    requirement_of,
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
