"""Faults on demand for simulated runs: job labels that make the simulator fail.

Under ``--simulate-gpus``, ``sim.fail`` (``oom``, ``nccl``, ``user_error``, ``data_error``,
``xid``, ``hang``) and ``sim.fail_at_step`` (default 1) choose the fault; ``sim.max_batch``
is the largest batch that fits a simulated card (default: half the spec's batch, so
the first halved retry fits). A GPU-side fault (``nccl``, ``xid``, ``hang``) strikes one
attempt only, as a flaky card or link would: the first, or ``sim.fail_attempt``. A user
or data error strikes every attempt. Real runners never read these labels.

Standard library only: the simulator's processes import this too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

from ..core.spec import JobSpec, TrainArgs, effective_train_args

FAIL_LABEL: Final = "sim.fail"
FAIL_AT_STEP_LABEL: Final = "sim.fail_at_step"
MAX_BATCH_LABEL: Final = "sim.max_batch"
FAIL_ATTEMPT_LABEL: Final = "sim.fail_attempt"
FAULTS: Final = ("oom", "nccl", "user_error", "data_error", "xid", "hang")
#: Faults of the inputs, which strike at start-up whatever the step.
INPUT_FAULTS: Final = frozenset({"user_error", "data_error"})
#: The Xid a simulated card reports: "GPU has fallen off the bus".
SIM_XID: Final = 79


def _int_label(labels: Mapping[str, str], key: str, default: int) -> int:
    value = labels.get(key, "")
    return int(value) if value.isdigit() and int(value) > 0 else default


def fault_args(
    labels: Mapping[str, str],
    *,
    attempt: int,
    batch_size: int,
    spec_batch_size: int,
    fault_dir: str | Path,
) -> list[str]:
    """The simulator flags for a job's ``sim.*`` labels on this attempt; none when no
    fault applies.

    Args:
        labels: the job's labels.
        attempt: the attempt being started (1 for the first).
        batch_size: the batch this attempt runs with (a retry may have halved it).
        spec_batch_size: the batch the job was submitted with.
        fault_dir: where a faulted simulated card is reported to the fake inventory.
    """
    kind = labels.get(FAIL_LABEL)
    if kind not in FAULTS:
        return []
    if kind == "oom":
        fits = _int_label(labels, MAX_BATCH_LABEL, max(spec_batch_size // 2, 1))
        if batch_size <= fits:
            return []
    elif kind not in INPUT_FAULTS and attempt != _int_label(labels, FAIL_ATTEMPT_LABEL, 1):
        return []
    step = _int_label(labels, FAIL_AT_STEP_LABEL, 1)
    args = ["--simulate-fail", kind, "--simulate-fail-at-step", str(step)]
    if kind == "xid":
        args += ["--simulate-fault-dir", str(fault_dir)]
    return args


def fault_message(kind: str, *, dataset: str, batch_size: int) -> str:
    """The last line of the traceback the real stack prints for ``kind``."""
    match kind:
        case "nccl":
            return (
                "torch.distributed.DistBackendError: [Rank 0] Watchdog caught collective "
                "operation timeout: WorkNCCL(SeqNum=1207, OpType=ALLREDUCE, NumelIn=1, "
                "NumelOut=1, Timeout(ms)=600000) ran for 600031 milliseconds before timing out."
            )
        case "xid":
            return "RuntimeError: CUDA error: unspecified launch failure"
        case "data_error":
            return (
                f"ValueError: The local path does not exist, dataset_id: `{dataset}`. "
                "os.path.exists(dataset_id): False"
            )
        case "user_error":
            return "ValueError: remaining_argv: ['--learning_rte', '1e-4']"
    return (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
        f"{batch_size:.2f} GiB. GPU 0 has a total capacity of 79.25 GiB of which 1.12 GiB is "
        "free."
    )


def report_faulted_card(fault_dir: str | Path, visible_devices: str) -> None:
    """Leave an Xid for the first visible card where the fake inventory reads it."""
    first = visible_devices.split(",", maxsplit=1)[0].strip()
    if not first:
        return
    folder = Path(fault_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / first).write_text(str(SIM_XID), encoding="utf-8")


def job_fault_args(
    spec: JobSpec, train_args: TrainArgs | None, attempt: int, output_root: Path
) -> list[str]:
    """The simulator flags for a simulated runner's start of this attempt of ``spec``."""
    from .gpu_probe import SIM_FAULT_DIR  # the runner's side only: the simulator stays light

    return fault_args(
        spec.labels,
        attempt=attempt,
        batch_size=effective_train_args(train_args or spec.train_args).batch_size,
        spec_batch_size=spec.effective_args.batch_size,
        fault_dir=output_root / SIM_FAULT_DIR,
    )
