"""The evaluation after training: ``swift eval`` on the trained model, and its scores.

It runs once the training process has exited with success, before the runner reports
the success, so the job still holds its GPUs and the evaluation runs on them. A failed
or timed-out evaluation never fails the job: its error is reported beside the success.
The scores are read from EvalScope's report files (``reports/<model>/<dataset>.json``,
each with ``dataset_name`` and ``score``) under ``--eval_output_dir``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Final

import msgspec

from swift_trainer.core.limits import MAX_REASON_CHARS
from swift_trainer.core.spec import JobSpec

from .outcome import JobOutcome
from .swift_command import SwiftInvocation, _base_env, _executable, job_output_dir

_log = logging.getLogger(__name__)

#: The longest an evaluation may run before it is ended and reported as failed.
DEFAULT_EVAL_TIMEOUT_S: Final = 6 * 3600.0
EVAL_FOLDER: Final = "eval"


class EvalReport(msgspec.Struct, frozen=True):
    """Scores by dataset, or why the evaluation failed."""

    results: dict[str, float] = {}
    error: str | None = None


def build_eval_command(
    spec: JobSpec,
    *,
    output_root: str | Path,
    trained: str,
    gpu_ids: Sequence[int],
    swift_executable: str | Sequence[str] = "swift",
    base_env: Mapping[str, str] | None = None,
) -> SwiftInvocation:
    """``swift eval`` of ``trained`` (the final checkpoint: an adapter for LoRA, the
    model for a full fine-tune), on the job's GPUs."""
    assert spec.eval is not None
    output_dir = job_output_dir(output_root, spec) / EVAL_FOLDER
    if spec.effective_args.train_type == "lora":
        model = ["--model", spec.model_path, "--adapters", trained]
    else:
        model = ["--model", trained]
    argv = [
        *_executable(swift_executable),
        "eval",
        *model,
        "--eval_dataset",
        *spec.eval.datasets,
        "--eval_output_dir",
        str(output_dir),
    ]
    if spec.eval.limit is not None:
        argv += ["--eval_limit", str(spec.eval.limit)]
    for key, value in spec.eval.args.items():
        argv += [f"--{key}", value]
    env = _base_env(base_env)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)
    return SwiftInvocation(argv=tuple(argv), env=env, output_dir=str(output_dir))


def read_scores(output_dir: str | Path) -> dict[str, float]:
    """Every ``{dataset_name, score}`` report under ``output_dir``, by dataset."""
    scores: dict[str, float] = {}
    for path in sorted(Path(output_dir).rglob("reports/*/*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        name, score = data.get("dataset_name"), data.get("score")
        if isinstance(name, str) and isinstance(score, int | float):
            scores[name] = float(score)
    return scores


async def run_eval(
    invocation: SwiftInvocation, *, timeout_s: float = DEFAULT_EVAL_TIMEOUT_S
) -> EvalReport:
    """Run ``swift eval`` to its end (its own session, output in the eval folder)."""
    folder = Path(invocation.output_dir)
    log_path = folder / "eval.log"
    try:
        log = await asyncio.to_thread(_open_log, log_path)
        with log:
            process = await asyncio.create_subprocess_exec(
                *invocation.argv,
                env=invocation.env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
    except OSError as exc:
        return EvalReport(error=f"swift eval could not start: {exc}"[:MAX_REASON_CHARS])
    try:
        async with asyncio.timeout(timeout_s):
            code = await process.wait()
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        return EvalReport(error=f"swift eval ran past {timeout_s:.0f}s and was ended")
    scores = await asyncio.to_thread(read_scores, folder)
    if code != 0:
        tail = await asyncio.to_thread(_tail, log_path)
        return EvalReport(
            results=scores, error=f"swift eval exited {code}: {tail}"[:MAX_REASON_CHARS]
        )
    if not scores:
        return EvalReport(error=f"swift eval wrote no scores under {folder}")
    return EvalReport(results=scores)


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("wb")


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


def evaluation_of(
    spec: JobSpec,
    gpu_ids: Sequence[int],
    *,
    output_root: Path,
    swift_executable: str | Sequence[str],
    base_env: Mapping[str, str] | None,
) -> Callable[[JobOutcome], Awaitable[EvalReport]] | None:
    """``swift eval`` of the trained model, when the spec asks for it (``spec.eval``)."""
    if spec.eval is None:
        return None

    async def evaluate(outcome: JobOutcome) -> EvalReport:
        trained = outcome.output_path or outcome.checkpoint
        if trained is None:
            return EvalReport(error="training left no final checkpoint to evaluate")
        invocation = build_eval_command(
            spec,
            output_root=output_root,
            trained=trained,
            gpu_ids=gpu_ids,
            swift_executable=swift_executable,
            base_env=base_env,
        )
        return await run_eval(invocation)

    return evaluate
