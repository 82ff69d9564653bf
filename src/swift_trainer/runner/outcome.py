"""The rules that decide how a run ended, from facts gathered by the supervisor.

Pure: no processes, files or clocks, so every rule has a unit test of its own. Success needs
**both** the log and the exit code: exit 0 without reaching the final step (or its summary
line) is a failure, and a non-zero exit is a failure even after swift wrote its summary (it
writes it even when it crashes while saving afterwards). An exit code of None means the
runner restarted while the run went on and could not collect it: the log decides.
"""

from __future__ import annotations

import signal
from typing import Final, Literal

import msgspec

from ..core.failure import Failure
from ..core.limits import MAX_REASON_CHARS
from .failure_classifier import GpuFault, classify_failure
from .training_log import TrainingSummary

#: The limits of ``ReportFailed.stderr_tail`` and of a ``Reason`` in core.commands.
MAX_STDERR_TAIL_CHARS: Final = 65536


class JobOutcome(msgspec.Struct, frozen=True, omit_defaults=True):
    status: Literal["succeeded", "failed", "stopped"]
    #: At most ``MAX_REASON_CHARS``, so it fits a core ``Reason``.
    reason: str
    #: None when the runner restarted in between and could not collect it.
    exit_code: int | None = None
    stderr_tail: str = ""
    final_step: int | None = None
    max_steps: int | None = None
    #: The newest complete checkpoint in the output folder (the one to resume or export).
    checkpoint: str | None = None
    output_path: str | None = None
    malformed_log_lines: int = 0
    #: What a failed run died of (only on ``failed``).
    failure: Failure | None = None


class ExportOutcome(msgspec.Struct, frozen=True, omit_defaults=True):
    status: Literal["succeeded", "failed", "stopped"]
    reason: str
    exit_code: int | None = None
    artifact_path: str | None = None
    stderr_tail: str = ""


class JobFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What is known about a training run once its processes are gone."""

    exit_code: int | None
    stop_requested: bool = False
    last_step: int | None = None
    max_steps: int | None = None
    summary: TrainingSummary | None = None
    #: The log's own progress reached ``max_steps`` (a summary without a step relies on it).
    log_reached_final_step: bool = False
    malformed_log_lines: int = 0
    #: The newest complete checkpoint, if any.
    checkpoint: str | None = None
    output_dir: str = ""
    stderr_tail: str = ""
    #: Processes that outlived SIGKILL.
    unkillable: tuple[int, ...] = ()
    #: Health problems NVML reported on the run's GPUs while it ran.
    gpu_faults: tuple[GpuFault, ...] = ()


class ExportFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What is known about a ``swift export`` run once its processes are gone."""

    exit_code: int | None
    stop_requested: bool = False
    artifact_path: str | None = None
    #: The artifact folder holds a ``config.json``.
    artifact_written: bool = False
    stderr_tail: str = ""


def clip(reason: str) -> str:
    """A reason cut to ``MAX_REASON_CHARS`` (with an ellipsis) so it fits a core ``Reason``."""
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    return reason[: MAX_REASON_CHARS - 1] + "\u2026"


def clip_stderr_tail(lines: list[str] | tuple[str, ...]) -> str:
    """The last lines of stderr, cut from the front to fit a ``ReportFailed``."""
    return "\n".join(lines)[-MAX_STDERR_TAIL_CHARS:]


def signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def exit_text(code: int | None) -> str:
    if code is None:
        return "its exit code is unknown (the runner restarted while it ran)"
    if code < 0:
        return f"it was killed by {signal_name(code)}"
    return f"it exited with code {code}"


def decide_job(facts: JobFacts) -> JobOutcome:
    code = facts.exit_code
    checkpoint = facts.checkpoint
    step, max_steps = facts.last_step, facts.max_steps
    failed = JobOutcome(
        status="failed",
        reason="",
        exit_code=code,
        stderr_tail=facts.stderr_tail,
        final_step=step,
        max_steps=max_steps,
        checkpoint=checkpoint,
        malformed_log_lines=facts.malformed_log_lines,
    )
    progress = f"step {step} of {max_steps}" if step is not None else "no training step"
    if facts.stop_requested:
        where = f"last checkpoint {checkpoint}" if checkpoint else "no checkpoint yet"
        reason = f"stopped on request at {progress}; {where}"
        return msgspec.structs.replace(failed, status="stopped", reason=clip(reason))
    summary = facts.summary
    finished = summary is not None and (
        summary.reached_final_step or (summary.step is None and facts.log_reached_final_step)
    )
    if code in (0, None) and finished:
        reason = "training reached its final step"
        if code is None:
            reason += " (exit code unknown after a runner restart; judged from its log)"
        return msgspec.structs.replace(
            failed,
            status="succeeded",
            reason=reason,
            output_path=checkpoint if checkpoint else facts.output_dir,
        )
    if code == 0:
        reason = f"swift exited with code 0 but training ended at {progress}"
        if summary is None:
            reason += " without its final summary line"
    elif code is None:
        reason = f"the process vanished at {progress}; {exit_text(code)}"
    else:
        reason = f"swift failed at {progress}: {exit_text(code)}"
        if summary is not None:
            reason += " after writing its final summary (a crash while finishing)"
    if facts.unkillable:
        reason += f"; processes {list(facts.unkillable)} survived SIGKILL"
    failure = classify_failure(code, facts.stderr_tail.splitlines(), facts.gpu_faults)
    return msgspec.structs.replace(failed, reason=clip(reason), failure=failure)


def decide_export(facts: ExportFacts) -> ExportOutcome:
    code = facts.exit_code
    artifact = facts.artifact_path
    tail = facts.stderr_tail
    if facts.stop_requested:
        return ExportOutcome(
            status="stopped",
            reason="export stopped on request",
            exit_code=code,
            stderr_tail=tail,
        )
    if code in (0, None) and artifact is not None and facts.artifact_written:
        return ExportOutcome(
            status="succeeded",
            reason="merged model written",
            exit_code=code,
            artifact_path=artifact,
            stderr_tail=tail,
        )
    if code == 0:
        reason = f"swift export exited with code 0 but wrote no model to {artifact}"
    else:
        reason = f"swift export failed: {exit_text(code)}"
    return ExportOutcome(
        status="failed",
        reason=clip(reason),
        exit_code=code,
        stderr_tail=tail,
    )


def lost_track_outcome(
    kind: Literal["job", "export"], exc: Exception, *, exit_code: int | None, stderr_tail: str
) -> JobOutcome | ExportOutcome:
    """The outcome of a run whose supervision itself failed (its processes were killed)."""
    reason = clip(f"the runner lost track of the process: {type(exc).__name__}: {exc}")
    if kind == "export":
        return ExportOutcome(status="failed", reason=reason, exit_code=exit_code)
    return JobOutcome(status="failed", reason=reason, exit_code=exit_code, stderr_tail=stderr_tail)
