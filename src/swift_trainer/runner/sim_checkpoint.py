"""What the simulated trainer leaves on disk, as ms-swift 4.6.0 does: the versioned output
folder, ``args.json``, ``logging.jsonl`` lines and ``checkpoint-N`` folders (model files
first, ``trainer_state.json`` last, rotated by ``save_total_limit``).

Standard library only: the simulator's processes import nothing else.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

#: A valid, empty safetensors file: 8-byte little-endian header length, then the header.
_SAFETENSORS_HEADER = b'{"__metadata__":{"format":"pt"}}'
EMPTY_SAFETENSORS = len(_SAFETENSORS_HEADER).to_bytes(8, "little") + _SAFETENSORS_HEADER


def output_dir_of(args: argparse.Namespace) -> Path:
    base = Path(args.output_dir or f"output/{Path(args.model).name}").absolute()
    if not args.add_version:
        return base
    versions = [-1]
    if base.is_dir():
        for entry in base.iterdir():
            match = re.match(r"v(\d+)", entry.name)
            if match:
                versions.append(int(match.group(1)))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return base / f"v{max(versions) + 1}-{stamp}"


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")


def append_jsonl(path: Path, data: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(data, ensure_ascii=False) + "\n")


def save_checkpoint(
    args: argparse.Namespace,
    output_dir: Path,
    step: int,
    *,
    max_steps: int,
    epoch: float,
    log_history: list[dict[str, Any]],
) -> Path:
    """Model files first, ``trainer_state.json`` last: its presence means complete."""
    path = output_dir / f"checkpoint-{step}"
    path.mkdir(parents=True, exist_ok=True)
    if args.tuner_type == "full":
        write_json(path / "config.json", {"architectures": ["SimulatedForCausalLM"]})
        (path / "model.safetensors").write_bytes(EMPTY_SAFETENSORS)
    else:
        write_json(
            path / "adapter_config.json",
            {
                "peft_type": "LORA",
                "base_model_name_or_path": args.model,
                "r": args.lora_rank,
                "lora_alpha": args.lora_alpha,
                "target_modules": args.target_modules,
                "task_type": "CAUSAL_LM",
            },
        )
        (path / "adapter_model.safetensors").write_bytes(EMPTY_SAFETENSORS)
    shutil.copyfile(output_dir / "args.json", path / "args.json")
    if not args.save_only_model:
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            (path / name).write_bytes(b"\x80\x04simulated")
    write_json(
        path / "trainer_state.json",
        {
            "global_step": step,
            "max_steps": max_steps,
            "epoch": epoch,
            "logging_steps": args.logging_steps,
            "save_steps": args.save_steps,
            "train_batch_size": args.per_device_train_batch_size,
            "best_metric": None,
            "best_model_checkpoint": None,
            "is_world_process_zero": True,
            "log_history": log_history[-20:],
        },
    )
    rotate_checkpoints(output_dir, args.save_total_limit)
    update_last_checkpoint_symlink(path)
    return path


def rotate_checkpoints(output_dir: Path, limit: int | None) -> None:
    """Keep the newest ``limit`` checkpoints, as HF's Trainer does with ``save_total_limit``."""
    if not limit or limit <= 0:
        return
    found = []
    for entry in output_dir.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    found.sort()
    for _step, entry in found[: max(len(found) - limit, 0)]:
        shutil.rmtree(entry, ignore_errors=True)


def update_last_checkpoint_symlink(checkpoint: Path) -> None:
    """ms-swift 4.6.0 points ``<output_dir>/last-checkpoint`` at each checkpoint it saves."""
    link = checkpoint.parent / "last-checkpoint"
    tmp = checkpoint.parent / "last-checkpoint.tmp"
    try:
        if os.path.lexists(tmp):
            tmp.unlink()
        os.symlink(checkpoint.name, tmp)
        os.replace(tmp, link)
    except OSError:
        return


def resume_step(args: argparse.Namespace) -> int:
    if not args.resume_from_checkpoint:
        return 0
    state = Path(args.resume_from_checkpoint).absolute() / "trainer_state.json"
    data = json.loads(state.read_text(encoding="utf-8"))
    return int(data["global_step"])
