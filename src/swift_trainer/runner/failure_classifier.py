"""What a failed ``swift`` run died of, from its exit, its output and its GPUs' health.

Pure: ``classify_failure`` takes the exit code or signal, the last output lines and the
faults NVML saw on the run's GPUs, and returns a ``Failure`` with the line that decided
it. The patterns are the texts PyTorch, NCCL, HF datasets and ms-swift print; the kinds
are tried from the most specific cause to the least, because one cause drags others
behind it (an out-of-memory on one rank ends in NCCL errors on the others).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

import msgspec

from ..core.failure import (
    DATA_ERROR,
    GPU_FAULT,
    KILLED,
    MAX_LOG_LINE_CHARS,
    NCCL,
    OOM,
    RUNNER_LOST,
    UNKNOWN,
    USER_ERROR,
    Failure,
)
from ..core.limits import MAX_REASON_CHARS


class GpuFault(msgspec.Struct, frozen=True):
    """A health problem NVML reported on one of the run's GPUs while it ran."""

    uuid: str
    reason: str


class Rule(msgspec.Struct, frozen=True):
    """A log pattern that decides one kind of failure."""

    kind: str
    pattern: re.Pattern[str]
    detail: str


def _rule(kind: str, detail: str, *patterns: str) -> Rule:
    return Rule(kind=kind, pattern=re.compile("|".join(patterns)), detail=detail)


#: In order of precedence: the first kind with a matching line wins.
RULES: Final[tuple[Rule, ...]] = (
    _rule(
        OOM,
        "the GPU ran out of memory; a smaller batch may fit",
        r"CUDA out of memory",
        r"torch\.(cuda\.)?OutOfMemoryError",
        r"CUBLAS_STATUS_ALLOC_FAILED",
        r"CUDA error: out of memory",
        r"HIP out of memory",
    ),
    _rule(
        GPU_FAULT,
        "the GPU reported a hardware error",
        r"uncorrectable ECC error encountered",
        r"CUDA error: unspecified launch failure",
        r"GPU has fallen off the bus",
        r"CUDA error: an illegal instruction was encountered",
        r"cudaErrorECCUncorrectable",
        r"\bXid\b",
        r"CUDA error: unknown error",
    ),
    _rule(
        NCCL,
        "a collective operation between ranks failed or timed out",
        r"NCCL error",
        r"Watchdog caught collective operation timeout",
        r"DistBackendError",
        r"ProcessGroupNCCL",
        r"\bnccl(Unhandled|System|Internal|Remote|InvalidUsage)",
        r"NCCL communicator was aborted",
        r"NCCL timeout",
    ),
    _rule(
        DATA_ERROR,
        "the dataset is missing or unreadable",
        r"The local path does not exist, dataset_id",
        r"Please input the training dataset",
        r"DatasetNotFoundError",
        r"DatasetGenerationError",
        r"Dataset .* load failed",
        r"Couldn't find a dataset script",
        r"Unable to find '.*'",
        r"FileNotFoundError: .*(\.jsonl|\.json|\.csv|\.txt|\.parquet|dataset)",
        r"pyarrow\.lib\.ArrowInvalid",
        r"JSONDecodeError",
    ),
    _rule(
        USER_ERROR,
        "the job's arguments, model or environment are wrong",
        r"ValueError: remaining_argv",
        r"Please set --model",
        r"is not a local folder and is not a valid model identifier",
        r"does not appear to have a file named",
        r"Please explicitly pass the model_type",
        r"unrecognized arguments",
        r"^\s*(ModuleNotFoundError|ImportError|SyntaxError): ",
        r"AssertionError: path: ",
    ),
    _rule(
        KILLED,
        "a signal ended the training (the kernel's out-of-memory killer or an operator)",
        r"Signal \d+ \(SIG\w+\) received by PID",
        r"exitcode\s*:\s*-9\b",
    ),
)

_SIGNAL_NAMES: Final = {9: "SIGKILL", 15: "SIGTERM", 6: "SIGABRT", 11: "SIGSEGV", 7: "SIGBUS"}
#: Shell-style exit codes of a process killed by a signal (128 + signal number).
_SHELL_SIGNAL_BASE: Final = 128


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _last_match(rule: Rule, lines: Sequence[str]) -> str | None:
    """The last line the rule matches: a traceback ends with the exception that won."""
    for line in reversed(lines):
        if rule.pattern.search(line):
            return line.strip()
    return None


def _signal_of(exit_code: int | None) -> int | None:
    if exit_code is None:
        return None
    if exit_code < 0:
        return -exit_code
    if exit_code > _SHELL_SIGNAL_BASE and exit_code - _SHELL_SIGNAL_BASE in _SIGNAL_NAMES:
        return exit_code - _SHELL_SIGNAL_BASE
    return None


def classify_failure(
    exit_code: int | None,
    lines: Sequence[str],
    gpu_faults: Sequence[GpuFault] = (),
) -> Failure:
    """The kind of a failed run, with what it means and the line that decided it.

    Args:
        exit_code: the process's exit code, negative for a signal, None when unknown.
        lines: the last lines of its output (stderr, where tracebacks go).
        gpu_faults: what NVML reported on the run's GPUs while it ran.
    """
    if gpu_faults:
        uuids = tuple(dict.fromkeys(f.uuid for f in gpu_faults))
        reasons = "; ".join(dict.fromkeys(f"{f.uuid}: {f.reason}" for f in gpu_faults))
        line = _last_match(RULES[1], lines) or _last_match(RULES[2], lines)
        return Failure(
            kind=GPU_FAULT,
            detail=_clip(f"NVML reported faults on the job's GPUs: {reasons}", MAX_REASON_CHARS),
            log_line=_clip(line, MAX_LOG_LINE_CHARS) if line else None,
            gpus=uuids,
        )
    for rule in RULES:
        line = _last_match(rule, lines)
        if line is not None:
            return Failure(
                kind=rule.kind,
                detail=rule.detail,
                log_line=_clip(line, MAX_LOG_LINE_CHARS),
            )
    signal = _signal_of(exit_code)
    if signal is not None:
        name = _SIGNAL_NAMES.get(signal, f"signal {signal}")
        return Failure(kind=KILLED, detail=f"the process was killed by {name}")
    if exit_code is None:
        return Failure(
            kind=RUNNER_LOST,
            detail="the process vanished while the runner was away; its exit is unknown",
        )
    last = next((line.strip() for line in reversed(lines) if line.strip()), None)
    return Failure(
        kind=UNKNOWN,
        detail=f"no known cause in the output; exit code {exit_code}",
        log_line=_clip(last, MAX_LOG_LINE_CHARS) if last else None,
    )
