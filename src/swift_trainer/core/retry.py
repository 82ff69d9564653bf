"""Whether a failed attempt is tried again, and what changes for the next one.

Pure: the job aggregate calls ``plan_retry`` with what it knows of the job and records the
answer in its events (``JobRequeued`` for a retry, ``JobFailed`` otherwise), so a replay
rebuilds the exact arguments of every attempt.
"""

from __future__ import annotations

import math

import msgspec

from .failure import GPU_FAULT, HARDWARE, NCCL, NOT_RETRIED, OOM, Failure, RetryPolicy
from .spec import TrainArgs, effective_train_args


class RetryCounts(msgspec.Struct, frozen=True):
    """Retries so far, per rule of the policy."""

    oom: int = 0
    gpu: int = 0


class Retry(msgspec.Struct, frozen=True):
    """Try again: ``reason`` says why and what changed."""

    reason: str
    #: The arguments of the next attempts, when they change.
    train_args: TrainArgs | None = None
    #: GPUs (by UUID) to avoid from now on, added to those avoided before.
    excluded_gpus: tuple[str, ...] = ()
    counts: RetryCounts = RetryCounts()


class GiveUp(msgspec.Struct, frozen=True):
    """Fail the job: ``reason`` says why no retry fits."""

    reason: str


def _halve_batch(args: TrainArgs) -> tuple[TrainArgs, str] | None:
    """Half the batch and more accumulation, keeping the effective batch; None at 1."""
    effective = effective_train_args(args)
    batch, accumulation = effective.batch_size, effective.gradient_accumulation_steps
    if batch <= 1:
        return None
    smaller = batch // 2
    more = math.ceil(accumulation * batch / smaller)
    changed = msgspec.structs.replace(args, batch_size=smaller, gradient_accumulation_steps=more)
    what = f"batch_size {batch} -> {smaller}, gradient_accumulation_steps {accumulation} -> {more}"
    return changed, what


def plan_retry(
    failure: Failure,
    policy: RetryPolicy,
    *,
    args: TrainArgs,
    counts: RetryCounts,
    attempt_gpus: tuple[str, ...],
) -> Retry | GiveUp:
    """The retry rule for ``failure``'s kind, applied to the job as it stands.

    Args:
        failure: the runner's classification of the attempt's end.
        policy: the job spec's ``retry``.
        args: the training arguments the failed attempt ran with.
        counts: the retries already made under each rule.
        attempt_gpus: the UUIDs of the GPUs the failed attempt ran on.
    """
    kind = failure.kind
    if kind in NOT_RETRIED:
        return GiveUp(f"{kind} is not retried: the same inputs would fail the same way")
    if kind == OOM:
        if policy.on_oom == "fail":
            return GiveUp("out of GPU memory; the retry policy says on_oom: fail")
        if counts.oom >= policy.max_oom_retries:
            return GiveUp(
                f"out of GPU memory after {counts.oom} retries with a smaller batch "
                f"(max_oom_retries {policy.max_oom_retries})"
            )
        halved = _halve_batch(args)
        if halved is None:
            return GiveUp("out of GPU memory with batch_size 1: no smaller batch to try")
        smaller, what = halved
        number = counts.oom + 1
        return Retry(
            reason=f"out of GPU memory: retry {number} of {policy.max_oom_retries} with {what}",
            train_args=smaller,
            counts=msgspec.structs.replace(counts, oom=number),
        )
    if kind in HARDWARE:
        if policy.on_gpu_fault == "fail":
            return GiveUp(f"{kind}; the retry policy says on_gpu_fault: fail")
        if counts.gpu >= policy.max_gpu_retries:
            return GiveUp(
                f"{kind} after {counts.gpu} retries on other GPUs "
                f"(max_gpu_retries {policy.max_gpu_retries})"
            )
        # The GPUs NVML blamed, or for a GPU fault without such a report all of the
        # attempt's; an NCCL error blames no card unless NVML did.
        avoid = failure.gpus or (attempt_gpus if kind == GPU_FAULT else ())
        number = counts.gpu + 1
        where = f"without GPUs {', '.join(avoid)}" if avoid else "on newly chosen GPUs"
        label = "GPU fault" if kind == GPU_FAULT else "NCCL error" if kind == NCCL else kind
        return Retry(
            reason=f"{label}: retry {number} of {policy.max_gpu_retries} {where}",
            excluded_gpus=avoid,
            counts=msgspec.structs.replace(counts, gpu=number),
        )
    return GiveUp(f"{kind} failures are not retried automatically")
