"""The evaluation after training: ``swift eval`` on the trained model, and its scores.

It runs once the training process has exited with success, before the runner reports
the success, so the job still holds its GPUs and the evaluation runs on them. A LoRA job's
final checkpoint is merged first (``swift export --merge_lora true``, into the folder an
export of that checkpoint uses, so a later export finds it done) and the merged model is
evaluated. A failed or timed-out step never fails the job: its error is reported beside
the success. The scores are read from EvalScope's reports
(``<eval_output_dir>/native/<run>/reports/<model>/<dataset>.json``, each with
``dataset_name`` and ``score``) of the run this evaluation made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Final

import msgspec

from swift_trainer.core.limits import MAX_REASON_CHARS
from swift_trainer.core.spec import JobSpec

from .outcome import JobOutcome
from .swift_command import (
    SwiftInvocation,
    _base_env,
    _executable,
    build_export_command,
    job_output_dir,
    pick_free_port,
)

_log = logging.getLogger(__name__)

#: The longest the merge and the evaluation together may run before they are ended and
#: reported as failed.
DEFAULT_EVAL_TIMEOUT_S: Final = 6 * 3600.0
EVAL_FOLDER: Final = "eval"
#: ``swift eval`` serves the model on this host for EvalScope; never beyond loopback.
EVAL_HOST: Final = "127.0.0.1"


class EvalReport(msgspec.Struct, frozen=True):
    """Scores by dataset, or why the evaluation failed, and the model evaluated."""

    results: dict[str, float] = {}
    error: str | None = None
    #: The model folder ``swift eval`` ran on: the merged model of a LoRA job, the final
    #: checkpoint of a full fine-tune.
    model: str | None = None


class EvalPlan(msgspec.Struct, frozen=True):
    """The commands of one evaluation: the merge (LoRA only), then ``swift eval``."""

    merge: SwiftInvocation | None
    evaluate: SwiftInvocation
    model: str


def build_eval_command(
    spec: JobSpec,
    *,
    output_root: str | Path,
    model: str,
    gpu_ids: Sequence[int],
    swift_executable: str | Sequence[str] = "swift",
    base_env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> SwiftInvocation:
    """``swift eval`` of the model folder ``model``, on the job's GPUs.

    ``swift eval`` serves the model over HTTP for EvalScope and waits until its port
    answers; a port of its own (``--port``, free now) keeps two evaluations on one host
    from scoring each other's model, and ``--host`` keeps the server on loopback.
    """
    assert spec.eval is not None
    output_dir = job_output_dir(output_root, spec) / EVAL_FOLDER
    argv = [*_executable(swift_executable), "eval", "--model", model]
    effective = spec.effective_args
    if effective.model_type is not None:
        argv += ["--model_type", effective.model_type]
    if effective.template is not None:
        argv += ["--template", effective.template]
    argv += [
        "--eval_dataset",
        *spec.eval.datasets,
        "--eval_output_dir",
        str(output_dir),
        "--host",
        EVAL_HOST,
        "--port",
        str(port if port is not None else pick_free_port()),
    ]
    if spec.eval.limit is not None:
        argv += ["--eval_limit", str(spec.eval.limit)]
    for key, value in spec.eval.args.items():
        argv += [f"--{key}", value]
    env = _base_env(base_env)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)
    return SwiftInvocation(argv=tuple(argv), env=env, output_dir=str(output_dir))


def plan_eval(
    spec: JobSpec,
    *,
    output_root: str | Path,
    trained: str,
    gpu_ids: Sequence[int],
    swift_executable: str | Sequence[str] = "swift",
    base_env: Mapping[str, str] | None = None,
) -> EvalPlan:
    """What evaluating ``trained`` (the final checkpoint) takes for this job.

    A LoRA checkpoint is merged into its base model on the job's GPUs first, into
    ``<checkpoint>-merged`` (replacing what a former run left there): the model a
    person deploys is the merged one, and it is the one scored. A full fine-tune's
    checkpoint is evaluated as it is.
    """
    merge = None
    model = trained
    if spec.effective_args.train_type == "lora":
        merge = build_export_command(
            trained,
            overwrite=True,
            gpu_ids=gpu_ids,
            swift_executable=swift_executable,
            base_env=base_env,
        )
        model = merge.output_dir
    evaluate = build_eval_command(
        spec,
        output_root=output_root,
        model=model,
        gpu_ids=gpu_ids,
        swift_executable=swift_executable,
        base_env=base_env,
    )
    return EvalPlan(merge=merge, evaluate=evaluate, model=model)


def report_runs(output_dir: str | Path) -> set[Path]:
    """EvalScope's run folders under ``output_dir`` (each holds ``reports/``)."""
    return {path.parent.parent.parent for path in Path(output_dir).rglob("reports/*/*.json")}


def read_scores(output_dir: str | Path, *, besides: set[Path] | None = None) -> dict[str, float]:
    """Every ``{dataset_name, score}`` report under ``output_dir``, by dataset.

    Reports of the run folders in ``besides`` (those a former evaluation left) are
    skipped; of the rest, a newer run's score wins.
    """
    skip = besides or set()
    scores: dict[str, float] = {}
    reports = Path(output_dir).rglob("reports/*/*.json")
    for path in sorted(reports, key=lambda p: (p.parent.parent.parent.name, str(p))):
        if path.parent.parent.parent in skip:
            continue
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


class _Ended(msgspec.Struct, frozen=True):
    """How one step ended: its exit code, or why it has none."""

    code: int | None
    error: str | None = None


async def _run_logged(
    invocation: SwiftInvocation, log_path: Path, what: str, deadline: float
) -> _Ended:
    """Run one command to its end in its own session, its output in ``log_path``."""
    try:
        log = await asyncio.to_thread(_open_log, log_path)
        with log:
            process = await asyncio.create_subprocess_exec(
                *invocation.argv,
                env=invocation.env,
                cwd=log_path.parent,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
    except OSError as exc:
        return _Ended(None, f"{what} could not start: {exc}")
    try:
        async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
            return _Ended(await process.wait())
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        return _Ended(None, f"{what} ran past the evaluation's time limit and was ended")


async def run_eval(plan: EvalPlan, *, timeout_s: float = DEFAULT_EVAL_TIMEOUT_S) -> EvalReport:
    """Merge (a LoRA job), then run ``swift eval`` to its end; logs in the eval folder."""
    folder = Path(plan.evaluate.output_dir)
    deadline = time.monotonic() + timeout_s
    if plan.merge is not None:
        log_path = folder / "merge.log"
        ended = await _run_logged(plan.merge, log_path, "merging the adapter", deadline)
        if ended.error is None and ended.code != 0:
            tail = await asyncio.to_thread(_tail, log_path)
            ended = _Ended(ended.code, f"merging the adapter exited {ended.code}: {tail}")
        if ended.error is not None:
            return EvalReport(error=ended.error[:MAX_REASON_CHARS])
    log_path = folder / "eval.log"
    before = await asyncio.to_thread(report_runs, folder)
    ended = await _run_logged(plan.evaluate, log_path, "swift eval", deadline)
    if ended.error is not None:
        return EvalReport(error=ended.error[:MAX_REASON_CHARS], model=plan.model)
    scores = await asyncio.to_thread(read_scores, folder, besides=before)
    if ended.code != 0:
        tail = await asyncio.to_thread(_tail, log_path)
        error = f"swift eval exited {ended.code}: {tail}"
        return EvalReport(results=scores, error=error[:MAX_REASON_CHARS], model=plan.model)
    if not scores:
        return EvalReport(error=f"swift eval wrote no scores under {folder}", model=plan.model)
    return EvalReport(results=scores, model=plan.model)


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
    """The evaluation of the trained model, when the spec asks for it (``spec.eval``)."""
    if spec.eval is None:
        return None

    async def evaluate(outcome: JobOutcome) -> EvalReport:
        trained = outcome.output_path or outcome.checkpoint
        if trained is None:
            return EvalReport(error="training left no final checkpoint to evaluate")
        plan = plan_eval(
            spec,
            output_root=output_root,
            trained=trained,
            gpu_ids=gpu_ids,
            swift_executable=swift_executable,
            base_env=base_env,
        )
        return await run_eval(plan)

    return evaluate
