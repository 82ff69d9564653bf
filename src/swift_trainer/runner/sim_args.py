"""The simulator's command line: the ``swift sft`` / ``swift export`` flags it honours, its
own knobs, and ms-swift's step arithmetic (how many optimizer steps a run has).

Standard library only: the simulator's processes import nothing else.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

DEFAULT_SAMPLES = 1000
_TRUE = {"1", "true", "yes", "on"}


def parse_bool(value: str) -> bool:
    return value.strip().lower() in _TRUE


def _env_float(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


def _parser() -> argparse.ArgumentParser:
    """Only the flags the simulation needs; everything else is accepted and ignored."""
    parser = argparse.ArgumentParser(prog="swift", add_help=False, allow_abbrev=False)
    add = parser.add_argument
    add("--model")
    add("--dataset", nargs="+", default=[])
    add("--val_dataset", nargs="+", default=[])
    add("--output_dir")
    add("--add_version", type=parse_bool, default=True)
    add("--tuner_type")
    add("--train_type")
    add("--num_train_epochs", type=float, default=3.0)
    add("--max_steps", type=int, default=-1)
    add("--per_device_train_batch_size", type=int, default=1)
    add("--gradient_accumulation_steps", type=int)
    add("--learning_rate", type=float)
    add("--warmup_ratio", type=float, default=0.0)
    add("--save_steps", type=int, default=500)
    add("--save_total_limit", type=int)
    add("--save_only_model", type=parse_bool, default=False)
    add("--logging_steps", type=int, default=5)
    add("--eval_steps", type=int)
    add("--split_dataset_ratio", type=float, default=0.0)
    add("--lora_rank", type=int, default=8)
    add("--lora_alpha", type=int, default=32)
    add("--target_modules", nargs="+", default=["all-linear"])
    add("--resume_from_checkpoint")
    add("--callbacks", nargs="+", default=[])
    add("--seed", type=int, default=42)
    # export
    add("--adapters", nargs="+", default=[])
    add("--merge_lora", type=parse_bool, default=False)
    add("--exist_ok", type=parse_bool, default=False)
    # simulator knobs
    add("--simulate-step-seconds", dest="step_seconds", type=float)
    add("--simulate-fail-at-step", dest="fail_at_step", type=int)
    add("--simulate-fail", dest="fail_kind")
    add("--simulate-fault-dir", dest="fault_dir")
    add("--simulate-crash-after-summary", dest="crash_after_summary", action="store_true")
    add("--simulate-export-fail", dest="export_fail", action="store_true")
    add("--simulate-startup-seconds", dest="startup_seconds", type=float)
    add("--simulate-log-lines-per-second", dest="log_lines_per_second", type=float)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    args, _unknown = _parser().parse_known_args(list(argv))
    if args.step_seconds is None:
        args.step_seconds = _env_float("SWIFT_SIM_STEP_SECONDS") or 0.05
    if args.fail_at_step is None:
        fail = os.environ.get("SWIFT_SIM_FAIL_AT_STEP")
        args.fail_at_step = int(fail) if fail else None
    if not args.crash_after_summary:
        args.crash_after_summary = parse_bool(os.environ.get("SWIFT_SIM_CRASH_AFTER_SUMMARY", ""))
    if not args.export_fail:
        args.export_fail = parse_bool(os.environ.get("SWIFT_SIM_EXPORT_FAIL", ""))
    if args.startup_seconds is None:
        args.startup_seconds = _env_float("SWIFT_SIM_STARTUP_SECONDS") or 0.0
    if args.log_lines_per_second is None:
        args.log_lines_per_second = _env_float("SWIFT_SIM_LOG_LINES_PER_SECOND") or 0.0
    args.tuner_type = args.tuner_type or args.train_type or "lora"
    return args


def dataset_samples(dataset: str) -> int:
    """Samples one ``--dataset`` entry contributes: ``#N`` if given, else a local file's
    record count, else ms-swift's hub datasets are assumed to hold ``DEFAULT_SAMPLES``."""
    _name, sep, count = dataset.rpartition("#")
    if sep and count.isdigit():
        return int(count)
    path = Path(dataset)
    if path.is_file():
        if path.suffix == ".jsonl":
            with path.open("rb") as handle:
                return sum(1 for line in handle if line.strip())
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return DEFAULT_SAMPLES
            return len(data) if isinstance(data, list) else 1
        if path.suffix == ".csv":
            with path.open("rb") as handle:
                return max(sum(1 for line in handle if line.strip()) - 1, 0)
    return DEFAULT_SAMPLES


def default_gradient_accumulation(batch_size: int, world_size: int) -> int:
    """ms-swift's own default when the flag is absent (``TrainArgumentsMixin``)."""
    return max(1, math.ceil(16 / batch_size / world_size))


def compute_max_steps(
    datasets: Sequence[str],
    *,
    batch_size: int = 1,
    gradient_accumulation_steps: int | None = None,
    world_size: int = 1,
    num_train_epochs: float = 3.0,
    max_steps: int = -1,
    split_dataset_ratio: float = 0.0,
) -> int:
    """The optimizer steps HF's Trainer would run, from the same inputs.

    Each rank sees ``ceil(samples / world_size)`` samples, in ``ceil(./batch_size)``
    batches; an optimizer step takes ``gradient_accumulation_steps`` of them (at least one
    step per epoch); epochs may be fractional. ``--max_steps`` > 0 wins.
    """
    if max_steps > 0:
        return max_steps
    samples = sum(dataset_samples(d) for d in datasets)
    samples -= int(samples * split_dataset_ratio)
    world = max(world_size, 1)
    accumulation = gradient_accumulation_steps or default_gradient_accumulation(
        batch_size,
        world,
    )
    batches_per_rank = math.ceil(math.ceil(samples / world) / max(batch_size, 1))
    steps_per_epoch = max(batches_per_rank // accumulation, 1)
    return max(math.ceil(num_train_epochs * steps_per_epoch), 1)
