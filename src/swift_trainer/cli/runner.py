"""``swift-trainer runner``: its command-line options; ``service.py`` (the composition root)
builds and runs the agent from them."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

from ..core.errors import SwiftTrainerError
from ..core.settings import Settings
from ..core.spec import HOST_LABEL_PATTERN
from ..runner.agent import DEFAULT_MAX_FOREIGN_MEMORY_MIB
from ..runner.factory import SIMULATOR, RunnerOptions, default_runner_id

_LABEL: Final = re.compile(HOST_LABEL_PATTERN)


def add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--nats-url", help="NATS server (default NATS_URL or the running 'up')")
    add("--runner-id", help="this runner's id (default: the host name)")
    add("--simulate-gpus", type=int, metavar="N", help="simulate N GPUs and run swift-sim")
    add("--simulate-gpu-name", default="Simulated A100-SXM4-80GB")
    add("--simulate-gpu-memory-mib", type=int, default=81920)
    add(
        "--simulate-step-seconds",
        type=float,
        help="seconds per simulated training step (SWIFT_SIM_STEP_SECONDS)",
    )
    add(
        "--swift-executable",
        help="the swift CLI to run, as one path (it is not split into words; default: "
        "'swift', or the simulator with --simulate-gpus)",
    )
    add("--output-root", help="where job output folders go (default OUTPUT_ROOT)")
    add("--state-dir", help="the runner's state (default <data dir>/runner-<id>)")
    add("--heartbeat-s", type=float, default=2.0)
    add("--lease-s", type=float, default=10.0)
    add("--grace-period-s", type=float, default=60.0, help="time to save a checkpoint on stop")
    add(
        "--max-foreign-memory-mib",
        type=int,
        default=DEFAULT_MAX_FOREIGN_MEMORY_MIB,
        help="refuse GPUs on which other processes hold more memory than this",
    )
    add(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a host label jobs can ask for with host_labels (repeatable; also "
        "RUNNER_LABELS=KEY=VALUE,KEY=VALUE)",
    )
    add(
        "--advertise-address",
        help="the address other hosts reach this one at, for multi-node jobs' MASTER_ADDR "
        "(default: this host's address on the route to NATS)",
    )
    add(
        "--stop-jobs-on-exit",
        action="store_true",
        help="stop training on shutdown (default: leave it running for the next start)",
    )


def parse_labels(pairs: Iterable[str]) -> dict[str, str]:
    """``KEY=VALUE`` pairs as a label map; a bad pair is refused with its text named."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.strip().partition("=")
        if not sep or not _LABEL.fullmatch(key) or not _LABEL.fullmatch(value):
            raise SwiftTrainerError(
                f"host label {pair!r} must be KEY=VALUE, each of letters, digits and "
                "'_ . / -' (at most 63 characters)",
                code="invalid_label",
            )
        labels[key] = value
    return labels


def runner_labels(given: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """Labels from ``RUNNER_LABELS`` (comma-separated), then ``--label`` over them."""
    from_env = [p for p in environ.get("RUNNER_LABELS", "").split(",") if p.strip()]
    return {**parse_labels(from_env), **parse_labels(given)}


def options_from_args(settings: Settings, args: argparse.Namespace) -> RunnerOptions:
    runner_id = args.runner_id or default_runner_id()
    if args.swift_executable:
        executable: tuple[str, ...] = (args.swift_executable,)
    elif args.simulate_gpus is not None:
        executable = SIMULATOR
    else:
        executable = ("swift",)
    return RunnerOptions(
        runner_id=runner_id,
        output_root=args.output_root or settings.output_root,
        state_dir=args.state_dir or str(Path(settings.data_dir) / f"runner-{runner_id}"),
        swift_executable=executable,
        simulate_gpus=args.simulate_gpus,
        simulate_gpu_name=args.simulate_gpu_name,
        simulate_gpu_memory_mib=args.simulate_gpu_memory_mib,
        simulate_step_seconds=args.simulate_step_seconds,
        heartbeat_s=args.heartbeat_s,
        lease_s=args.lease_s,
        grace_period_s=args.grace_period_s,
        stop_jobs_on_exit=args.stop_jobs_on_exit,
        max_foreign_memory_mib=args.max_foreign_memory_mib,
        labels=runner_labels(args.label, os.environ),
        advertise_address=args.advertise_address,
    )
