"""The evaluation after training: the merge and ``swift eval`` commands, real runs of the
simulator's ``swift export`` and ``swift eval``, the scores they leave, the merged model a
later export reuses, and a failure that never fails the training."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from tests.runner.agent_helpers import (
    job_events,
    job_spec,
    make_agent,
    ok,
    submit_and_schedule,
    wait_event,
)

from swift_trainer.bus.command_client import CommandClient
from swift_trainer.bus.command_handler import CommandHandler
from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.spec import EvalSpec, JobSpec, TrainArgs
from swift_trainer.core.sqlstore import SqlEventStore
from swift_trainer.runner.agent import RunnerAgent
from swift_trainer.runner.evaluation import (
    EvalPlan,
    EvalReport,
    build_eval_command,
    plan_eval,
    read_scores,
    report_runs,
    run_eval,
)
from swift_trainer.runner.factory import SIMULATOR
from swift_trainer.runner.outcome import JobOutcome
from swift_trainer.runner.reporting import OutboxJobReporter


def spec(train_type: str = "lora") -> JobSpec:
    return JobSpec(
        data_path="d",
        model_path="Qwen/Qwen2.5-0.5B",
        output_dir="out/job-1",
        train_args=TrainArgs(train_type=train_type, template="qwen"),  # type: ignore[arg-type]
        eval=EvalSpec(datasets=("gsm8k", "arc"), limit=10, args={"eval_backend": "Native"}),
    )


def adapter_checkpoint(folder: Path) -> Path:
    """A LoRA checkpoint as the simulator's export needs it (its adapter config)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    return folder


def test_a_lora_job_is_merged_on_its_gpus_and_the_merged_model_evaluated(
    tmp_path: Path,
) -> None:
    plan = plan_eval(
        spec(), output_root=tmp_path, trained="/o/checkpoint-20", gpu_ids=[2, 3], base_env={}
    )
    assert plan.merge is not None
    assert plan.merge.argv == (
        "swift", "export", "--adapters", "/o/checkpoint-20", "--merge_lora", "true",
        "--exist_ok", "true",
    )  # fmt: skip
    assert plan.merge.env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert plan.model == plan.merge.output_dir == "/o/checkpoint-20-merged"
    argv = plan.evaluate.argv
    port = argv[argv.index("--port") + 1]
    assert argv == (
        "swift", "eval", "--model", "/o/checkpoint-20-merged", "--template", "qwen",
        "--eval_dataset", "gsm8k", "arc", "--eval_output_dir", str(tmp_path / "out/job-1/eval"),
        "--host", "127.0.0.1", "--port", port, "--eval_limit", "10", "--eval_backend", "Native",
    )  # fmt: skip
    assert "--adapters" not in argv and int(port) > 0
    assert plan.evaluate.env["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_a_full_fine_tune_is_evaluated_as_its_checkpoint(tmp_path: Path) -> None:
    plan = plan_eval(
        spec("full"), output_root=tmp_path, trained="/o/checkpoint-20", gpu_ids=[0], base_env={}
    )
    assert plan.merge is None
    assert plan.model == "/o/checkpoint-20"
    assert plan.evaluate.argv[2:4] == ("--model", "/o/checkpoint-20")


async def test_a_real_merge_then_eval_scores_the_merged_model(tmp_path: Path) -> None:
    checkpoint = adapter_checkpoint(tmp_path / "o" / "checkpoint-20")
    plan = plan_eval(
        spec(), output_root=tmp_path, trained=str(checkpoint), gpu_ids=[0],
        swift_executable=SIMULATOR, base_env={},
    )  # fmt: skip
    report = await run_eval(plan)
    merged = tmp_path / "o" / "checkpoint-20-merged"
    assert report.error is None, report.error
    assert report.model == str(merged)
    assert json.loads((merged / "config.json").read_text())["merged_from"] == str(checkpoint)
    assert set(report.results) == {"gsm8k", "arc"}
    assert all(0 <= v <= 1 for v in report.results.values())
    eval_dir = Path(plan.evaluate.output_dir)
    assert report.results == read_scores(eval_dir)  # what EvalScope's reports hold
    [run] = report_runs(eval_dir)
    assert run.parent.name == "native" and (run / "reports" / merged.name).is_dir()
    assert (eval_dir / "merge.log").is_file() and (eval_dir / "eval.log").is_file()


async def test_a_failed_merge_is_the_evaluations_error_and_nothing_is_evaluated(
    tmp_path: Path,
) -> None:
    checkpoint = adapter_checkpoint(tmp_path / "o" / "checkpoint-20")
    plan = plan_eval(
        spec(), output_root=tmp_path, trained=str(checkpoint), gpu_ids=[0],
        swift_executable=SIMULATOR, base_env={"SWIFT_SIM_EXPORT_FAIL": "1"},
    )  # fmt: skip
    report = await run_eval(plan)
    assert report.results == {} and report.model is None
    assert report.error is not None and "merging the adapter exited 1" in report.error
    assert "out of host memory" in report.error
    assert not (Path(plan.evaluate.output_dir) / "eval.log").exists()


async def test_a_second_evaluation_reports_only_its_own_run(tmp_path: Path) -> None:
    """A former run's reports in the same folder (an earlier job under this output
    folder) never pass for this run's scores."""
    old = tmp_path / "out/job-1/eval/native/20200101_000000/reports/m"
    old.mkdir(parents=True)
    (old / "mmlu.json").write_text(json.dumps({"dataset_name": "mmlu", "score": 0.9}))
    plan = plan_eval(
        spec("full"), output_root=tmp_path, trained=str(tmp_path / "ckpt"), gpu_ids=[0],
        swift_executable=SIMULATOR, base_env={},
    )  # fmt: skip
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    report = await run_eval(plan)
    assert set(report.results) == {"gsm8k", "arc"}

    failing = msgspec.structs.replace(
        plan,
        evaluate=msgspec.structs.replace(
            plan.evaluate, env={**plan.evaluate.env, "SWIFT_SIM_EVAL_FAIL": "1"}
        ),
    )
    again = await run_eval(failing)
    assert again.results == {}, "the earlier runs' scores are not this run's"


async def test_a_missing_model_folder_fails_the_evaluation(tmp_path: Path) -> None:
    plan = plan_eval(
        spec("full"), output_root=tmp_path, trained=str(tmp_path / "gone"), gpu_ids=[0],
        swift_executable=SIMULATOR, base_env={},
    )  # fmt: skip
    report = await run_eval(plan)
    assert report.error is not None and "config.json" in report.error
    assert report.model == str(tmp_path / "gone")


async def test_a_failed_evaluation_is_an_error_beside_the_success(tmp_path: Path) -> None:
    inv = build_eval_command(
        spec(), output_root=tmp_path, model="Qwen/Qwen2.5-0.5B", gpu_ids=[0],
        swift_executable=SIMULATOR, base_env={"SWIFT_SIM_EVAL_FAIL": "1"},
    )  # fmt: skip
    report = await run_eval(EvalPlan(merge=None, evaluate=inv, model="Qwen/Qwen2.5-0.5B"))
    assert report.results == {}
    assert report.error is not None and "exited 1" in report.error
    assert "could not load the dataset" in report.error

    class Outbox:
        def __init__(self) -> None:
            self.sent: list[c.AnyCommand] = []

        def submit(self, command: c.AnyCommand, command_id: str | None = None) -> None:
            self.sent.append(command)

    async def evaluate(_: JobOutcome) -> EvalReport:
        return report

    outbox = Outbox()
    reports = OutboxJobReporter(
        job_id="job-1", attempt=1, runner_id="r", outbox=outbox, logs=None,  # type: ignore[arg-type]
        evaluate=evaluate,
    )  # fmt: skip
    await reports.on_finished(JobOutcome(status="succeeded", reason="", output_path="ckpt"))
    [sent] = outbox.sent
    assert isinstance(sent, c.ReportSucceeded)
    assert sent.eval_error == report.error and sent.eval_results == {}
    assert sent.eval_model == "Qwen/Qwen2.5-0.5B"


def test_reports_that_are_not_scores_are_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "native" / "20260101_000000" / "reports" / "m"
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
    ok_spec = decode_spec({**base, "eval": {"datasets": ["gsm8k"]}})
    assert ok_spec.eval == EvalSpec(datasets=("gsm8k",))
    assert msgspec.json.decode(msgspec.json.encode(ok_spec))["eval"] == {"datasets": ["gsm8k"]}


def test_a_success_recorded_before_evaluation_existed_still_decodes() -> None:
    from swift_trainer.core.job import JobStatus, evolve, initial_state

    old = b'{"type":"JobSucceeded","at":"2025-01-01T00:00:00Z","job_id":"x","attempt":1}'
    event = e.decode_event("JobSucceeded", old)
    assert isinstance(event, e.JobSucceeded)
    assert (event.eval_results, event.eval_error, event.eval_model) == ({}, None, None)
    state = evolve(initial_state("x"), event)
    assert state.status is JobStatus.SUCCEEDED and state.eval_results == {}
    assert state.eval_model is None


# --- through the runner agent: the merged model is evaluated, and the export reuses it ----


@pytest.fixture
async def agent(
    nc: Client, bus: CommandHandler, tmp_path: Path, sim_env: dict[str, str]
) -> AsyncIterator[RunnerAgent]:
    started = make_agent(nc, tmp_path, sim_env)
    await started.start()
    try:
        yield started
    finally:
        started.stop_jobs_on_exit = True
        await started.stop()


async def test_a_lora_job_is_evaluated_merged_and_its_export_reuses_the_merge(
    agent: RunnerAgent, nc: Client, store: SqlEventStore
) -> None:
    client = CommandClient(nc, timeout=5.0, actor="test-scheduler")
    job = msgspec.structs.replace(
        job_spec("job-eval"), eval=EvalSpec(datasets=("gsm8k",)), auto_export=True
    )
    await submit_and_schedule(client, "job-eval", job)
    succeeded = (await wait_event(store, "job-eval", e.JobSucceeded, timeout=60))[0]
    assert succeeded.eval_error is None, succeeded.eval_error
    assert succeeded.output_path is not None
    merged = Path(succeeded.output_path + "-merged")
    assert succeeded.eval_model == str(merged)
    assert set(succeeded.eval_results) == {"gsm8k"}
    made = (merged / "model.safetensors").stat().st_mtime_ns

    exported = (await wait_event(store, "job-eval", e.ExportSucceeded, timeout=60))[0]
    assert exported.artifact_path == str(merged)
    events = await job_events(store, "job-eval")
    assert not [x for x in events if isinstance(x, e.ExportStarted)], "merged once, not twice"
    assert (merged / "model.safetensors").stat().st_mtime_ns == made

    # Asked again with overwrite, the export merges anew (the user's call).
    await ok(client, c.RequestExport(job_id="job-eval", overwrite=True))
    await wait_event(store, "job-eval", e.ExportStarted, timeout=60)
    await wait_event(store, "job-eval", e.ExportSucceeded, count=2, timeout=60)
