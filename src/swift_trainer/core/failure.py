"""Why an attempt failed, and the job spec's policy for retrying each cause.

The runner classifies a failed attempt (it alone sees the exit and the log) into a
``Failure``; the aggregate applies the spec's ``RetryPolicy`` to it. Kinds are plain
strings so that new ones can be added without breaking events recorded before them.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from .limits import MAX_REASON_CHARS

#: Training ran out of GPU memory; a smaller batch may fit.
OOM: Final = "oom"
#: A collective (NCCL) error or timeout between ranks.
NCCL: Final = "nccl"
#: The GPU misbehaved: Xid, uncorrectable ECC, a card lost from the bus.
GPU_FAULT: Final = "gpu_fault"
#: The job's own arguments, model or code are wrong; a retry fails the same way.
USER_ERROR: Final = "user_error"
#: The dataset is missing or unreadable; a retry fails the same way.
DATA_ERROR: Final = "data_error"
#: The runner went away with the attempt.
RUNNER_LOST: Final = "runner_lost"
#: A signal ended the process (the kernel's OOM killer, an operator).
KILLED: Final = "killed"
#: Nothing decisive was found.
UNKNOWN: Final = "unknown"

#: Every kind this release classifies; readers must accept others too.
FAILURE_KINDS: Final[tuple[str, ...]] = (
    OOM,
    NCCL,
    GPU_FAULT,
    USER_ERROR,
    DATA_ERROR,
    RUNNER_LOST,
    KILLED,
    UNKNOWN,
)
#: Kinds a retry cannot fix.
NOT_RETRIED: Final = frozenset({USER_ERROR, DATA_ERROR})
#: Kinds that point at a GPU: the retry avoids the GPUs the attempt ran on.
HARDWARE: Final = frozenset({NCCL, GPU_FAULT})

MAX_LOG_LINE_CHARS: Final = 1024
Detail = Annotated[str, msgspec.Meta(max_length=MAX_REASON_CHARS)]
LogLine = Annotated[str, msgspec.Meta(max_length=MAX_LOG_LINE_CHARS)]
GpuUuid = Annotated[str, msgspec.Meta(max_length=128)]


class Failure(msgspec.Struct, frozen=True, omit_defaults=True):
    """A classified failure: its kind, what it means, and the log line that decided it."""

    kind: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] = UNKNOWN
    detail: Detail = ""
    #: The decisive line of the process's output, when one decided it.
    log_line: LogLine | None = None
    #: GPUs (by UUID) that reported faults during the attempt.
    gpus: tuple[GpuUuid, ...] = ()


class RetryPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """How a job is retried, by the cause of its failure.

    ``user_error`` and ``data_error`` are never retried. An out-of-memory failure is
    retried with half the batch and twice the gradient accumulation (the effective batch
    is kept), at most ``max_oom_retries`` times. An NCCL error or a GPU fault is retried
    on other GPUs, at most ``max_gpu_retries`` times.
    """

    on_oom: Literal["halve_batch", "fail"] = "halve_batch"
    max_oom_retries: Annotated[int, msgspec.Meta(ge=0, le=6)] = 2
    on_gpu_fault: Literal["other_gpus", "fail"] = "other_gpus"
    max_gpu_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
