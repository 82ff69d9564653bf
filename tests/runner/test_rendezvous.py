"""Rank 0's marker and the check other ranks make, the advertised address, and labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from swift_trainer.cli.runner import parse_labels, runner_labels
from swift_trainer.core.errors import SwiftTrainerError
from swift_trainer.core.gang import rendezvous_env
from swift_trainer.core.spec import JobSpec
from swift_trainer.runner.rendezvous import (
    RendezvousMarker,
    free_port,
    reaching_address,
    shared_output_problem,
    write_marker,
)
from swift_trainer.runner.swift_command import build_sft_command

MARKER = RendezvousMarker(job_id="g", attempt=2, master_addr="10.0.0.1", master_port=29511)


def test_a_rank_that_sees_rank_0s_marker_may_start(tmp_path: Path) -> None:
    write_marker(tmp_path / "out", MARKER)
    assert shared_output_problem(tmp_path / "out", MARKER, wait_s=0) is None


def test_a_rank_on_other_storage_is_told_to_share_output_root(tmp_path: Path) -> None:
    problem = shared_output_problem(tmp_path / "elsewhere", MARKER, wait_s=0)
    assert problem is not None
    assert "no marker" in problem
    assert "OUTPUT_ROOT must be storage that every host of a multi-node job shares" in problem


def test_a_marker_of_another_attempt_is_not_proof(tmp_path: Path) -> None:
    write_marker(tmp_path, RendezvousMarker("g", 1, "10.0.0.1", 29511))
    problem = shared_output_problem(tmp_path, MARKER, wait_s=0)
    assert problem is not None and "the marker of attempt 1" in problem


def test_the_advertised_address_defaults_to_the_route_to_nats() -> None:
    assert reaching_address("nats://127.0.0.1:4222") == "127.0.0.1"
    assert reaching_address(None) == "127.0.0.1"
    assert 0 < free_port() < 65536


def test_labels_come_from_the_environment_and_the_flags_win() -> None:
    env = {"RUNNER_LABELS": "rack=r1, pool=spot"}
    assert runner_labels(["pool=gold", "ib=hdr"], env) == {
        "rack": "r1",
        "pool": "gold",
        "ib": "hdr",
    }
    assert runner_labels([], {}) == {}


@pytest.mark.parametrize("bad", ["rack", "=r1", "rack=", "rack=r 1", "ra$ck=1"])
def test_a_bad_label_is_refused_with_its_text(bad: str) -> None:
    with pytest.raises(SwiftTrainerError) as info:
        parse_labels([bad])
    assert info.value.code == "invalid_label"
    assert repr(bad) in info.value.message


def test_every_rank_gets_the_same_arguments_and_its_own_node_rank(tmp_path: Path) -> None:
    spec = JobSpec(data_path="d", model_path="m", output_dir="out/g", gpu_count=2, nodes=2)
    commands = [
        build_sft_command(
            spec,
            output_root=tmp_path,
            gpu_ids=(0, 1),
            base_env={"NODE_RANK": "7"},
            rendezvous=rendezvous_env(
                nodes=2, rank=rank, master_addr="10.0.0.1", master_port=29511, nproc_per_node=2
            ),
        )
        for rank in (0, 1)
    ]
    assert commands[0].argv == commands[1].argv
    for rank, command in enumerate(commands):
        assert command.env["NODE_RANK"] == str(rank)
        assert (command.env["NNODES"], command.env["NPROC_PER_NODE"]) == ("2", "2")
        assert (command.env["MASTER_ADDR"], command.env["MASTER_PORT"]) == ("10.0.0.1", "29511")
