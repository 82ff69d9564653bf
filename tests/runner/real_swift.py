"""What the opt-in real ms-swift tests share: the venv, the tiny model, the offline
environment, an agent that runs the real ``swift`` and the tiny job's spec.

The runner tests' ``conftest`` offers the fixtures (``swift_venv``, ``tiny``,
``real_agent``) to every module of the folder.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from tests.runner.agent_helpers import fast_supervisor

from swift_trainer.bus.command_handler import CommandHandler
from swift_trainer.core.spec import JobSpec, TrainArgs
from swift_trainer.runner.agent import RunnerAgent
from swift_trainer.runner.gpu_probe import FakeInventory

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("SWIFT_TRAINER_SWIFT_VENV", REPO / ".venv-swift"))
ENABLED = os.environ.get("SWIFT_TRAINER_REAL_SWIFT", "").strip().lower() in {"1", "true", "yes"}


@pytest.fixture
def swift_venv() -> Path:
    if not ENABLED:
        pytest.skip("real ms-swift is opt-in: SWIFT_TRAINER_REAL_SWIFT=1 (see setup_real_swift.sh)")
    if not (VENV / "bin" / "swift").is_file():
        pytest.fail(
            f"SWIFT_TRAINER_REAL_SWIFT=1 but {VENV / 'bin' / 'swift'} is missing: "
            "run scripts/setup_real_swift.sh first",
        )
    return VENV


async def run_checked(*argv: str, env: dict[str, str] | None = None) -> str:
    """Run a command to its end; its stdout, or the test fails with its stderr."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode(errors="replace")[-4000:]
    return out.decode()


@pytest.fixture
async def tiny(swift_venv: Path, tmp_path: Path) -> dict[str, str]:
    """The tiny model and dataset, made with the swift venv's python (no hub)."""
    out = await run_checked(
        str(swift_venv / "bin" / "python"),
        str(REPO / "scripts" / "make_tiny_qwen2.py"),
        str(tmp_path / "tiny"),
        "--samples",
        "64",
    )
    paths: dict[str, str] = json.loads(out.strip().splitlines()[-1])
    return paths


def offline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWIFT_SIM_", "NPROC_"))}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "MODELSCOPE_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "2",
        },
    )
    return env


async def start_real_agent(
    swift_venv: Path, nc: Client, tmp_path: Path, env: dict[str, str] | None = None
) -> RunnerAgent:
    """A started runner agent whose jobs run the real ``swift`` on the CPU, with ``env``
    added to its offline environment (a tracker's address, say)."""
    inventory = FakeInventory(1, output_root=tmp_path / "out")  # no GPU needed: CPU run
    supervisor = fast_supervisor(
        tmp_path / "runs", inventory, grace_period_s=120.0, progress_interval_s=0.5
    )
    agent = RunnerAgent(
        nc,
        runner_id="real",
        inventory=inventory,
        supervisor=supervisor,
        swift_executable=str(swift_venv / "bin" / "swift"),
        output_root=tmp_path / "out",
        state_dir=tmp_path / "agent",
        heartbeat_s=1.0,
        grace_period_s=120.0,
        base_env={**offline_env(), **(env or {})},
        command_timeout_s=5.0,
    )
    await agent.start()
    return agent


@pytest.fixture
async def real_agent(
    swift_venv: Path, nc: Client, bus: CommandHandler, tmp_path: Path
) -> AsyncIterator[RunnerAgent]:
    agent = await start_real_agent(swift_venv, nc, tmp_path)
    try:
        yield agent
    finally:
        agent.stop_jobs_on_exit = True
        await agent.stop()


def tiny_spec(tiny: dict[str, str], max_steps: int) -> JobSpec:
    return JobSpec(
        data_path=tiny["dataset"],
        model_path=tiny["model"],
        output_dir="jobs/real",
        train_args=TrainArgs(
            max_steps=max_steps,
            save_steps=10,
            save_total_limit=50,
            logging_steps=2,
            batch_size=1,
            gradient_accumulation_steps=1,
            learning_rate=1e-3,
            warmup_ratio=0.0,
            max_length=128,
            torch_dtype="float32",
            dataloader_num_workers=0,
            dataset_num_proc=1,
            model_type="qwen2",
            template="qwen",
            lora_rank=4,
            lora_alpha=8,
        ),
    )
