"""Check a real GPU host without internet: its NVML inventory, and one tiny real job on a GPU.

Why: the runner's GPU path (NVML through pynvml, ``CUDA_VISIBLE_DEVICES`` pinning, a trainer
process that shows up in NVML's process list and so is recognised as ours, not foreign)
cannot be exercised on machines without GPUs. This script does it on the real thing, with
nothing but the ``.venv-swift`` made by ``scripts/setup_real_swift.sh`` (which installs
this project into it) and no hub access::

    .venv-swift/bin/python scripts/gpu_host_check.py [--gpu 0] [--steps 60] [--keep DIR]

It prints, as JSON lines on stdout:

1. ``{"inventory": ...}``: the ``NvmlInventory`` snapshot of every GPU (memory, processes,
   health, driver and CUDA versions);
2. a tiny random Qwen2 and dataset made locally (``make_tiny_qwen2.py``), then ``swift sft``
   (LoRA, bfloat16 when the card supports it) on one GPU through ``Supervisor`` and
   ``build_sft_command``, printing ``{"started": ...}``, each ``{"progress": ...}`` and
   ``{"checkpoint": ...}``, and midway ``{"inventory_during_job": ...}`` with the memory the
   runner would count as foreign on that GPU (expected: 0, the trainer is ours);
3. ``{"outcome": ...}`` and ``{"trainer_seen_on_gpu": ...}``. The exit status is 0 when the
   job succeeded; a trainer NVML never listed on the card (a container whose PID namespace
   hides host pids, or a job too short to be caught) is printed as a warning, because the
   runner would then count its own job's memory as foreign.

``--simulate-gpus`` swaps NVML for the runner's fake inventory and trains on the CPU: it
checks this script itself on a machine without GPUs, nothing about the host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgspec

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # also works without the editable install

from swift_trainer.core.spec import JobSpec, TrainArgs  # noqa: E402
from swift_trainer.runner.gpu_probe import (  # noqa: E402
    FakeInventory,
    GpuInventory,
    NvmlInventory,
    foreign_memory_mib,
)
from swift_trainer.runner.outcome import ExportOutcome, JobOutcome  # noqa: E402
from swift_trainer.runner.run_watch import Stream  # noqa: E402
from swift_trainer.runner.supervisor import Supervisor  # noqa: E402
from swift_trainer.runner.swift_command import build_sft_command  # noqa: E402
from swift_trainer.runner.training_log import TrainingProgress  # noqa: E402


def emit(kind: str, value: Any) -> None:
    data = msgspec.to_builtins(value)
    sys.stdout.write(json.dumps({kind: data}, default=str) + "\n")
    sys.stdout.flush()


class PrintingReporter:
    """A ``JobReporter`` that prints what the runner agent would report."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.outcome: JobOutcome | None = None
        self.done = asyncio.Event()
        self.stderr_lines = 0

    async def on_started(self, pid: int, argv: tuple[str, ...]) -> None:
        emit("started", {"pid": pid, "argv": list(argv)})

    async def on_progress(self, progress: TrainingProgress) -> None:
        emit("progress", progress)

    async def on_checkpoint(self, step: int, path: str) -> None:
        emit("checkpoint", {"step": step, "path": path})

    async def on_log_line(self, stream: Stream, line: str) -> None:
        if stream == "stderr":
            self.stderr_lines += 1
        if self.verbose:
            sys.stderr.write(f"[{stream}] {line}\n")

    async def on_finished(self, outcome: JobOutcome | ExportOutcome) -> None:
        assert isinstance(outcome, JobOutcome)
        self.outcome = outcome
        self.done.set()


def swift_executable() -> str:
    """``swift`` next to this interpreter (the .venv-swift), else one on PATH."""
    candidate = Path(sys.executable).parent / "swift"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("swift")
    if found is None:
        raise SystemExit("no swift executable: run with .venv-swift/bin/python")
    return found


def make_tiny(out_dir: Path) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_tiny_qwen2.py"), str(out_dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    paths: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
    return paths


def bf16_supported() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    except ImportError:
        return False


async def run_check(args: argparse.Namespace, work: Path) -> int:
    inventory: GpuInventory
    registry: FakeInventory | None = None
    if args.simulate_gpus:
        inventory = registry = FakeInventory(args.simulate_gpus, output_root=work)
    else:
        inventory = NvmlInventory(work)
    snapshot = await asyncio.to_thread(inventory.snapshot)
    emit("inventory", snapshot)
    if not any(gpu.index == args.gpu for gpu in snapshot.gpus):
        emit("error", f"GPU {args.gpu} is not in the NVML inventory ({snapshot.error})")
        return 2

    tiny = make_tiny(work / "tiny")
    spec = JobSpec(
        data_path=tiny["dataset"],
        model_path=tiny["model"],
        output_dir="gpu-check",
        train_args=TrainArgs(
            max_steps=args.steps,
            save_steps=max(args.steps // 3, 1),
            logging_steps=5,
            batch_size=1,
            gradient_accumulation_steps=1,
            max_length=128,
            torch_dtype="bfloat16" if bf16_supported() else "float32",
            dataloader_num_workers=0,
            dataset_num_proc=1,
            model_type="qwen2",
            template="qwen",
            lora_rank=4,
            lora_alpha=8,
        ),
    )
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "MODELSCOPE_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    gpu = next(g for g in snapshot.gpus if g.index == args.gpu)
    invocation = build_sft_command(
        spec,
        output_root=work / "out",
        gpu_ids=[args.gpu],
        gpu_uuids=[gpu.uuid],  # pinned by UUID, as the runner does with a placement
        swift_executable=swift_executable(),
        base_env=env,
    )
    supervisor = Supervisor(
        state_dir=work / "state", progress_interval_s=1.0, process_registry=registry
    )
    reporter = PrintingReporter(args.verbose)
    await supervisor.start_job("gpu-check", 1, invocation, reporter, gpu_ids=[args.gpu])

    seen_on_gpu = False
    while not reporter.done.is_set():
        own = supervisor.own_pids()
        during = await asyncio.to_thread(inventory.snapshot)
        card = next((g for g in during.gpus if g.index == args.gpu), None)
        if card is not None and any(p.pid in own for p in card.processes):
            if not seen_on_gpu:
                emit(
                    "inventory_during_job",
                    {
                        "gpu": card,
                        "own_pids_on_gpu": [p.pid for p in card.processes if p.pid in own],
                        "foreign_memory_mib": foreign_memory_mib(card, own),
                    },
                )
            seen_on_gpu = True
        try:
            await asyncio.wait_for(reporter.done.wait(), 0.5)
        except TimeoutError:
            continue
    await supervisor.close()
    inventory.close()
    emit("outcome", reporter.outcome)
    emit("trainer_seen_on_gpu", seen_on_gpu)
    if not seen_on_gpu:
        emit(
            "warning",
            f"NVML never listed the trainer on GPU {args.gpu}: the runner would count its "
            "memory as foreign (PID namespace?) or the job was too short (raise --steps)",
        )
    succeeded = reporter.outcome is not None and reporter.outcome.status == "succeeded"
    return 0 if succeeded else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", type=int, default=0, help="NVML index of the GPU to train on")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    parser.add_argument("--verbose", action="store_true", help="echo swift's output to stderr")
    parser.add_argument(
        "--simulate-gpus",
        type=int,
        default=0,
        metavar="N",
        help="fake inventory and CPU training: checks this script on a machine without GPUs",
    )
    args = parser.parse_args(argv)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        return asyncio.run(run_check(args, args.keep.resolve()))
    with tempfile.TemporaryDirectory(prefix="gpu-host-check-") as tmp:
        return asyncio.run(run_check(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
