"""Faults on demand: the simulator fails as asked, and the supervisor classifies it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.runner.runner_helpers import SWIFT_SIM, RecordingReporter, make_spec

from swift_trainer.runner.gpu_faults import fault_reader
from swift_trainer.runner.gpu_probe import SIM_FAULT_DIR, FakeInventory
from swift_trainer.runner.outcome import JobOutcome
from swift_trainer.runner.sim_faults import fault_args
from swift_trainer.runner.supervisor import Supervisor
from swift_trainer.runner.swift_command import build_sft_command

from .test_supervisor import finished


@pytest.fixture
def inventory(tmp_path: Path) -> FakeInventory:
    return FakeInventory(2, output_root=tmp_path / "root")


@pytest.fixture
async def sup(tmp_path: Path, inventory: FakeInventory) -> AsyncIterator[Supervisor]:
    instance = Supervisor(
        state_dir=tmp_path / "state",
        grace_period_s=10.0,
        poll_interval_s=0.05,
        progress_interval_s=0.0,
        tree_refresh_s=0.1,
        process_registry=inventory,
        gpu_faults=fault_reader(inventory),
    )
    try:
        yield instance
    finally:
        await instance.close(kill=True)


async def run_with(
    tmp_path: Path,
    sup: Supervisor,
    inventory: FakeInventory,
    env: dict[str, str],
    labels: dict[str, str],
    attempt: int = 1,
) -> JobOutcome:
    spec = make_spec(save_steps=4, logging_steps=2)
    extra = fault_args(
        labels,
        attempt=attempt,
        batch_size=2,
        spec_batch_size=2,
        fault_dir=tmp_path / "root" / SIM_FAULT_DIR,
    )
    invocation = build_sft_command(
        spec,
        output_root=tmp_path / "root",
        gpu_ids=(1,),
        gpu_uuids=(inventory.uuid(1),),
        swift_executable=SWIFT_SIM,
        base_env=env,
        extra_args=extra,
    )
    reporter = RecordingReporter()
    await sup.start_job("job-1", attempt, invocation, reporter, gpu_ids=(1,))
    outcome = await finished(reporter)
    assert isinstance(outcome, JobOutcome)
    return outcome


@pytest.mark.parametrize(
    ("fault", "kind", "text"),
    [
        ("oom", "oom", "CUDA out of memory"),
        ("nccl", "nccl", "Watchdog caught collective operation timeout"),
        ("data_error", "data_error", "The local path does not exist"),
        ("user_error", "user_error", "remaining_argv"),
    ],
)
async def test_a_simulated_fault_is_classified(
    tmp_path: Path,
    sup: Supervisor,
    inventory: FakeInventory,
    sim_env: dict[str, str],
    fault: str,
    kind: str,
    text: str,
) -> None:
    labels = {"sim.fail": fault, "sim.fail_at_step": "3"}
    outcome = await run_with(tmp_path, sup, inventory, sim_env, labels)
    assert outcome.status == "failed"
    assert outcome.failure is not None
    assert outcome.failure.kind == kind
    assert outcome.failure.log_line is not None
    assert text in outcome.failure.log_line


async def test_an_xid_faults_the_simulated_card_and_names_it(
    tmp_path: Path, sup: Supervisor, inventory: FakeInventory, sim_env: dict[str, str]
) -> None:
    outcome = await run_with(tmp_path, sup, inventory, sim_env, {"sim.fail": "xid"})
    assert outcome.failure is not None
    assert outcome.failure.kind == "gpu_fault"
    assert outcome.failure.gpus == (inventory.uuid(1),)
    gpus = inventory.snapshot().gpus
    assert gpus[1].health.suspect
    assert gpus[1].health.problems == ("Xid 79",)
    assert not gpus[0].health.suspect


async def test_a_gpu_side_fault_strikes_the_first_attempt_only(
    tmp_path: Path, sup: Supervisor, inventory: FakeInventory, sim_env: dict[str, str]
) -> None:
    outcome = await run_with(tmp_path, sup, inventory, sim_env, {"sim.fail": "nccl"}, attempt=2)
    assert outcome.status == "succeeded"


def test_an_oom_fault_spares_a_batch_that_fits() -> None:
    labels = {"sim.fail": "oom"}
    common = {"attempt": 1, "spec_batch_size": 8, "fault_dir": "/tmp/x"}
    assert fault_args(labels, batch_size=8, **common) != []  # type: ignore[arg-type]
    assert fault_args(labels, batch_size=4, **common) == []  # type: ignore[arg-type]
    tight = {**labels, "sim.max_batch": "2"}
    assert fault_args(tight, batch_size=4, **common) != []  # type: ignore[arg-type]


def test_unknown_or_absent_labels_add_nothing() -> None:
    for labels in ({}, {"sim.fail": "meteor"}):
        assert fault_args(labels, attempt=1, batch_size=1, spec_batch_size=1, fault_dir="/x") == []
