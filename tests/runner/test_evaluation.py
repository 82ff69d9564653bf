"""The evaluation after training: the ``swift eval`` command, a real run of the simulator's
``swift eval``, the scores it leaves, and a failure that never fails the training."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from swift_trainer.core import commands as c
from swift_trainer.core.spec import EvalSpec, JobSpec, TrainArgs
from swift_trainer.runner.evaluation import build_eval_command, read_scores, run_eval
from swift_trainer.runner.factory import SIMULATOR
from swift_trainer.runner.outcome import JobOutcome
from swift_trainer.runner.reporting import OutboxJobReporter


def spec(train_type: str = "lora") -> JobSpec:
    return JobSpec(
        data_path="d",
        model_path="Qwen/Qwen2.5-0.5B",
        output_dir="out/job-1",
        train_args=TrainArgs(train_type=train_type),  # type: ignore[arg-type]
        eval=EvalSpec(datasets=("gsm8k", "arc"), limit=10, args={"eval_backend": "Native"}),
    )


def test_the_eval_command_evaluates_the_adapter_on_the_jobs_gpus(tmp_path: Path) -> None:
    inv = build_eval_command(
        spec(), output_root=tmp_path, trained="/o/checkpoint-20", gpu_ids=[2, 3], base_env={}
    )
    assert inv.argv == (
        "swift", "eval", "--model", "Qwen/Qwen2.5-0.5B", "--adapters", "/o/checkpoint-20",
        "--eval_dataset", "gsm8k", "arc", "--eval_output_dir", str(tmp_path / "out/job-1/eval"),
        "--eval_limit", "10", "--eval_backend", "Native",
    )  # fmt: skip
    assert inv.env["CUDA_VISIBLE_DEVICES"] == "2,3"
    full = build_eval_command(
        spec("full"), output_root=tmp_path, trained="/o/checkpoint-20", gpu_ids=[0], base_env={}
    )
    assert full.argv[2:4] == ("--model", "/o/checkpoint-20") and "--adapters" not in full.argv


async def test_a_real_run_of_swift_eval_yields_a_score_per_dataset(tmp_path: Path) -> None:
    inv = build_eval_command(
        spec(), output_root=tmp_path, trained=str(tmp_path / "ckpt"), gpu_ids=[0],
        swift_executable=SIMULATOR, base_env={},
    )  # fmt: skip
    report = await run_eval(inv)
    assert report.error is None
    assert set(report.results) == {"gsm8k", "arc"}
    assert all(0 <= v <= 1 for v in report.results.values())
    assert report.results == read_scores(inv.output_dir)  # what EvalScope's reports hold


async def test_a_failed_evaluation_is_an_error_beside_the_success(tmp_path: Path) -> None:
    inv = build_eval_command(
        spec(), output_root=tmp_path, trained="ckpt", gpu_ids=[0],
        swift_executable=SIMULATOR, base_env={"SWIFT_SIM_EVAL_FAIL": "1"},
    )  # fmt: skip
    report = await run_eval(inv)
    assert report.results == {}
    assert report.error is not None and "exited 1" in report.error
    assert "could not load the dataset" in report.error

    class Outbox:
        def __init__(self) -> None:
            self.sent: list[c.AnyCommand] = []

        def submit(self, command: c.AnyCommand, command_id: str | None = None) -> None:
            self.sent.append(command)

    async def evaluate(_: JobOutcome) -> object:
        return report

    outbox = Outbox()
    reports = OutboxJobReporter(
        job_id="job-1", attempt=1, runner_id="r", outbox=outbox, logs=None,  # type: ignore[arg-type]
        evaluate=evaluate,  # type: ignore[arg-type]
    )  # fmt: skip
    await reports.on_finished(JobOutcome(status="succeeded", reason="", output_path="ckpt"))
    [sent] = outbox.sent
    assert isinstance(sent, c.ReportSucceeded)
    assert sent.eval_error == report.error and sent.eval_results == {}


def test_reports_that_are_not_scores_are_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "reports" / "m"
    folder.mkdir(parents=True)
    (folder / "a.json").write_text(json.dumps({"dataset_name": "a", "score": 0.5}))
    (folder / "b.json").write_text("not json")
    (folder / "c.json").write_text(json.dumps({"dataset_name": "c", "score": "high"}))
    assert read_scores(tmp_path) == {"a": 0.5}


def test_eval_in_a_spec_is_checked() -> None:
    from swift_trainer.core.errors import InvalidSpec
    from swift_trainer.core.spec import decode_spec

    base = {"data_path": "d", "model_path": "m", "output_dir": "o"}
    for bad in ({"datasets": []}, {"datasets": ["a"], "args": {"--x": "1"}}, {"dataset": ["a"]}):
        with pytest.raises(InvalidSpec):
            decode_spec({**base, "eval": bad})
    ok = decode_spec({**base, "eval": {"datasets": ["gsm8k"]}})
    assert ok.eval == EvalSpec(datasets=("gsm8k",))
    assert msgspec.json.decode(msgspec.json.encode(ok))["eval"] == {"datasets": ["gsm8k"]}


def test_a_success_recorded_before_evaluation_existed_still_decodes() -> None:
    from swift_trainer.core import events as e
    from swift_trainer.core.job import JobStatus, evolve, initial_state

    old = b'{"type":"JobSucceeded","at":"2025-01-01T00:00:00Z","job_id":"x","attempt":1}'
    event = e.decode_event("JobSucceeded", old)
    assert isinstance(event, e.JobSucceeded)
    assert (event.eval_results, event.eval_error) == ({}, None)
    state = evolve(initial_state("x"), event)
    assert state.status is JobStatus.SUCCEEDED and state.eval_results == {}
