"""Building a runner agent from its options: the inventory (NVML, or fake GPUs), the
supervisor and the agent. ``swift-trainer runner`` and ``up`` both call
``create_runner_agent``."""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import msgspec
from nats.aio.client import Client

from ..core.settings import Settings
from .agent import DEFAULT_MAX_FOREIGN_MEMORY_MIB, RunnerAgent
from .gpu_faults import fault_reader
from .gpu_metrics import MeteredRunnerAgent
from .gpu_probe import FakeInventory, GpuInventory, NvmlInventory
from .supervisor import Supervisor

#: The swift command of a simulated runner: the bundled simulator.
SIMULATOR: Final = (sys.executable, "-m", "swift_trainer.runner.simulator")
_UNSAFE_ID: Final = re.compile(r"[^A-Za-z0-9_-]+")


def default_runner_id() -> str:
    """The host name, reduced to the characters a subject token and a KV key allow."""
    name = _UNSAFE_ID.sub("-", socket.gethostname()).strip("-")
    return name[:64] or "runner"


class RunnerOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Everything ``create_runner_agent`` needs; ``swift-trainer runner`` fills it from its
    options and ``up --simulate-gpus N`` from its own."""

    runner_id: str
    output_root: str
    state_dir: str
    swift_executable: tuple[str, ...] = ("swift",)
    simulate_gpus: int | None = None
    simulate_gpu_name: str = "Simulated A100-SXM4-80GB"
    simulate_gpu_memory_mib: int = 81920
    simulate_step_seconds: float | None = None
    heartbeat_s: float = 2.0
    lease_s: float = 10.0
    grace_period_s: float = 60.0
    stop_jobs_on_exit: bool = False
    max_foreign_memory_mib: int = DEFAULT_MAX_FOREIGN_MEMORY_MIB
    #: Host labels (``--label KEY=VALUE``, ``RUNNER_LABELS``) that jobs' ``host_labels`` match.
    labels: dict[str, str] = {}
    #: The address other hosts reach this one at; default: the one on the route to NATS.
    advertise_address: str | None = None


def simulated_options(
    settings: Settings, gpu_count: int, *, runner_id: str | None = None, **overrides: object
) -> RunnerOptions:
    """Options for a simulated runner next to an embedded service (``up --simulate-gpus``)."""
    rid = runner_id or default_runner_id()
    options = RunnerOptions(
        runner_id=rid,
        output_root=settings.output_root,
        state_dir=str(Path(settings.data_dir) / f"runner-{rid}"),
        swift_executable=SIMULATOR,
        simulate_gpus=gpu_count,
    )
    return msgspec.structs.replace(options, **overrides)


def create_runner_agent(
    nc: Client,
    options: RunnerOptions,
    *,
    command_timeout_s: float = 10.0,
    base_env: Mapping[str, str] | None = None,
) -> RunnerAgent:
    """Build the inventory (NVML, or fake GPUs), the supervisor and the agent."""
    state_dir = Path(options.state_dir)
    inventory: GpuInventory
    if options.simulate_gpus is not None:
        inventory = FakeInventory(
            options.simulate_gpus,
            output_root=options.output_root,
            name=options.simulate_gpu_name,
            memory_mib=options.simulate_gpu_memory_mib,
        )
        registry: FakeInventory | None = inventory
    else:
        inventory = NvmlInventory(options.output_root)
        registry = None
    supervisor = Supervisor(
        state_dir=state_dir / "runs",
        grace_period_s=options.grace_period_s,
        process_registry=registry,
        gpu_faults=fault_reader(inventory),
    )
    env = dict(os.environ if base_env is None else base_env)
    if options.simulate_step_seconds is not None:
        env["SWIFT_SIM_STEP_SECONDS"] = str(options.simulate_step_seconds)
    return MeteredRunnerAgent(
        nc,
        runner_id=options.runner_id,
        inventory=inventory,
        supervisor=supervisor,
        swift_executable=options.swift_executable,
        output_root=options.output_root,
        state_dir=state_dir / "agent",
        heartbeat_s=options.heartbeat_s,
        lease_s=options.lease_s,
        grace_period_s=options.grace_period_s,
        base_env=env,
        max_foreign_memory_mib=options.max_foreign_memory_mib,
        command_timeout_s=command_timeout_s,
        stop_jobs_on_exit=options.stop_jobs_on_exit,
        simulate_faults=options.simulate_gpus is not None,
        labels=options.labels,
        advertise_address=options.advertise_address,
    )
