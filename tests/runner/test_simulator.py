"""The swift simulator: ms-swift's step arithmetic, files and exit behaviour."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from tests.runner.runner_helpers import SWIFT_SIM

from swift_trainer.runner.sim_args import compute_max_steps, dataset_samples
from swift_trainer.runner.sim_checkpoint import EMPTY_SAFETENSORS
from swift_trainer.runner.simulator import format_time
from swift_trainer.runner.training_log import (
    TrainingLogReader,
    TrainingProgress,
    list_checkpoints,
    parse_duration,
)


def run_sim(
    args: list[str],
    env: dict[str, str],
    cwd: Path,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SWIFT_SIM, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def sft_args(output_dir: Path, *extra: str) -> list[str]:
    return [
        "sft",
        "--model",
        "Qwen/Qwen2.5-7B-Instruct",
        "--dataset",
        "AI-ModelScope/alpaca#24",
        "--output_dir",
        str(output_dir),
        "--add_version",
        "false",
        "--callbacks",
        "graceful_exit",
        "--gradient_accumulation_steps",
        "2",
        "--num_train_epochs",
        "1",
        "--save_steps",
        "4",
        "--save_total_limit",
        "2",
        "--logging_steps",
        "3",
        "--some_future_flag",
        "value",
        *extra,
    ]


def test_max_steps_from_dataset_sample_counts(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": []}\n' * 37 + "\n")
    assert dataset_samples("AI-ModelScope/coco#20000") == 20000
    assert dataset_samples("ds:subset#12") == 12
    assert dataset_samples(str(data)) == 37
    assert dataset_samples("swift/unknown-dataset") == 1000
    # 100 samples, batch 2, accumulation 5 -> 10 steps an epoch
    assert compute_max_steps(["a#100"], batch_size=2, gradient_accumulation_steps=5) == 30
    assert (
        compute_max_steps(
            ["a#60", "b#40"],
            batch_size=2,
            gradient_accumulation_steps=5,
            num_train_epochs=1,
        )
        == 10
    )
    # world size divides the samples between ranks
    assert compute_max_steps(["a#100"], gradient_accumulation_steps=5, world_size=2) == 30
    # fractional epochs and a dataset file
    assert compute_max_steps([str(data)], gradient_accumulation_steps=1, num_train_epochs=0.5) == 19
    # ms-swift's default accumulation: ceil(16 / batch / world)
    assert compute_max_steps(["a#160"], num_train_epochs=1) == 10
    # at least one step per epoch; --max_steps wins
    assert compute_max_steps(["a#3"], gradient_accumulation_steps=16, num_train_epochs=2) == 2
    assert compute_max_steps(["a#100"], max_steps=7) == 7
    # the validation split leaves the training set
    assert (
        compute_max_steps(
            ["a#100"],
            gradient_accumulation_steps=1,
            num_train_epochs=1,
            split_dataset_ratio=0.1,
        )
        == 90
    )


def test_format_time_matches_swift() -> None:
    assert format_time(34.9) == "34s"
    assert format_time(268) == "4m 28s"
    assert format_time(3723) == "1h 2m 3s"
    assert format_time(93784) == "1d 2h 3m 4s"
    for seconds in (0, 59, 61, 3600, 90000):
        assert parse_duration(format_time(seconds)) == seconds


def test_sft_writes_swift_shaped_logs_and_checkpoints(
    tmp_path: Path, sim_env: dict[str, str]
) -> None:
    out = tmp_path / "out"
    result = run_sim(sft_args(out), sim_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("run sh: `")
    assert "{'loss': " in result.stdout  # the trainer prints each log dict like swift

    lines = [json.loads(line) for line in (out / "logging.jsonl").read_text().splitlines()]
    first = lines[0]
    assert list(first) == [
        "loss",
        "grad_norm",
        "learning_rate",
        "token_acc",
        "epoch",
        "global_step/max_steps",
        "elapsed_time",
        "remaining_time",
        "memory(GiB)",
        "train_speed(s/it)",
    ]
    assert first["global_step/max_steps"] == "1/12"
    assert "last_model_checkpoint" in lines[-1]  # ms-swift 4.6.0's closing run record

    reader = TrainingLogReader(out / "logging.jsonl")
    records = reader.finish()
    assert reader.malformed_lines == 0
    progress = [r for r in records if isinstance(r, TrainingProgress)]
    assert [p.step for p in progress] == [1, 3, 6, 9, 12]
    assert all(p.max_steps == 12 and p.loss is not None for p in progress)
    assert reader.summary is not None
    assert reader.summary.reached_final_step
    assert reader.summary.train_runtime_s is not None

    checkpoints = list_checkpoints(out)
    assert [c.step for c in checkpoints] == [8, 12]  # save_total_limit=2 rotated 4 away
    last = Path(checkpoints[-1].path)
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["global_step"] == 12
    assert state["max_steps"] == 12
    assert (last / "adapter_model.safetensors").read_bytes() == EMPTY_SAFETENSORS
    header_len = int.from_bytes(EMPTY_SAFETENSORS[:8], "little")
    assert json.loads(EMPTY_SAFETENSORS[8 : 8 + header_len]) == {"__metadata__": {"format": "pt"}}
    assert json.loads((last / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert (last / "optimizer.pt").exists()  # save_only_model defaults to false in swift
    assert json.loads((out / "args.json").read_text())["model"] == "Qwen/Qwen2.5-7B-Instruct"


def test_add_version_creates_a_versioned_folder(tmp_path: Path, sim_env: dict[str, str]) -> None:
    args = sft_args(tmp_path / "out", "--max_steps", "1")
    args[args.index("--add_version") + 1] = "true"
    assert run_sim(args, sim_env, tmp_path).returncode == 0
    (versioned,) = (tmp_path / "out").iterdir()
    assert versioned.name.startswith("v0-")
    assert (versioned / "logging.jsonl").exists()


def test_resume_starts_at_the_checkpoint_step(tmp_path: Path, sim_env: dict[str, str]) -> None:
    out = tmp_path / "out"
    first = run_sim(
        sft_args(out, "--max_steps", "4", "--save_only_model", "true"), sim_env, tmp_path
    )
    assert first.returncode == 0
    assert not (out / "checkpoint-4" / "optimizer.pt").exists()
    size = (out / "logging.jsonl").stat().st_size
    resumed = run_sim(
        sft_args(out, "--max_steps", "9", "--resume_from_checkpoint", str(out / "checkpoint-4")),
        sim_env,
        tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr
    reader = TrainingLogReader(out / "logging.jsonl", start_offset=size)
    steps = [r.step for r in reader.finish() if isinstance(r, TrainingProgress)]
    assert steps == [6, 9]  # steps 5.. run, and the first logged one is past the checkpoint
    assert reader.summary is not None
    assert reader.summary.reached_final_step


def test_resume_from_a_missing_checkpoint_fails(tmp_path: Path, sim_env: dict[str, str]) -> None:
    result = run_sim(
        sft_args(tmp_path / "out", "--resume_from_checkpoint", str(tmp_path / "nope")),
        sim_env,
        tmp_path,
    )
    assert result.returncode != 0
    assert "Traceback (most recent call last):" in result.stderr


def test_fail_at_step_exits_non_zero_with_a_traceback(
    tmp_path: Path, sim_env: dict[str, str]
) -> None:
    out = tmp_path / "out"
    env = {**sim_env, "SWIFT_SIM_FAIL_AT_STEP": "5"}
    result = run_sim(sft_args(out), env, tmp_path)
    assert result.returncode == 1
    assert "Traceback (most recent call last):" in result.stderr
    assert "CUDA out of memory" in result.stderr
    reader = TrainingLogReader(out / "logging.jsonl")
    reader.finish()
    assert reader.last_step == 3
    assert reader.summary is None
    assert [c.step for c in list_checkpoints(out)] == [4]


def test_crash_after_summary(tmp_path: Path, sim_env: dict[str, str]) -> None:
    out = tmp_path / "out"
    result = run_sim(sft_args(out, "--simulate-crash-after-summary"), sim_env, tmp_path)
    assert result.returncode == 1
    reader = TrainingLogReader(out / "logging.jsonl")
    reader.finish()
    assert reader.summary is not None
    assert reader.summary.reached_final_step


def test_missing_model_is_an_error(tmp_path: Path, sim_env: dict[str, str]) -> None:
    result = run_sim(["sft", "--dataset", "a#1"], sim_env, tmp_path)
    assert result.returncode == 1
    assert "Please set --model" in result.stderr
    assert run_sim(["infer"], sim_env, tmp_path).returncode == 2
    assert run_sim([], sim_env, tmp_path).returncode == 2


@pytest.mark.parametrize("overwrite", [False, True])
def test_export_merges_next_to_the_checkpoint(
    tmp_path: Path,
    sim_env: dict[str, str],
    overwrite: bool,
) -> None:
    out = tmp_path / "out"
    assert run_sim(sft_args(out, "--max_steps", "2"), sim_env, tmp_path).returncode == 0
    ckpt = out / "checkpoint-2"
    export = ["export", "--adapters", str(ckpt), "--merge_lora", "true"]
    result = run_sim(export, sim_env, tmp_path)
    assert result.returncode == 0, result.stderr
    merged = out / "checkpoint-2-merged"
    assert json.loads((merged / "config.json").read_text())["merged_from"] == str(ckpt)
    again = run_sim([*export, "--exist_ok", "true"] if overwrite else export, sim_env, tmp_path)
    if overwrite:
        assert again.returncode == 0
    else:
        assert again.returncode == 1
        assert "FileExistsError" in again.stderr
    custom = run_sim([*export, "--output_dir", str(tmp_path / "merged")], sim_env, tmp_path)
    assert custom.returncode == 0
    assert (tmp_path / "merged" / "config.json").exists()


def test_export_failures(tmp_path: Path, sim_env: dict[str, str]) -> None:
    not_adapter = run_sim(
        ["export", "--adapters", str(tmp_path), "--merge_lora", "true"], sim_env, tmp_path
    )
    assert not_adapter.returncode == 1
    assert "is not an adapter" in not_adapter.stderr
    out = tmp_path / "out"
    assert run_sim(sft_args(out, "--max_steps", "1"), sim_env, tmp_path).returncode == 0
    failed = run_sim(
        ["export", "--adapters", str(out / "checkpoint-1"), "--simulate-export-fail"],
        sim_env,
        tmp_path,
    )
    assert failed.returncode == 1
    assert not (out / "checkpoint-1-merged").exists()


def test_chatter_writes_numbered_timestamped_lines_at_the_rate(
    tmp_path: Path, sim_env: dict[str, str]
) -> None:
    env = {**sim_env, "SWIFT_SIM_STEP_SECONDS": "0.1", "SWIFT_SIM_LOG_LINES_PER_SECOND": "500"}
    started = time.time()
    result = run_sim(sft_args(tmp_path / "out", "--max_steps", "10"), env, tmp_path)
    ended = time.time()
    assert result.returncode == 0, result.stderr
    chatter = [
        match.groups()
        for line in result.stdout.splitlines()
        if (match := re.fullmatch(r"\[INFO:swift\] chatter (\d+) at ([\d.]+) x+", line))
    ]
    numbers = [int(n) for n, _ in chatter]
    assert numbers == list(range(len(numbers))), "numbered in order, none missing"
    assert 250 <= len(numbers) <= 600, len(numbers)  # about 1 s of training at 500 lines/s
    assert all(started <= float(at) <= ended for _, at in chatter)
    # The training's own lines are still whole lines among them.
    assert any(line.startswith("{") and "loss" in line for line in result.stdout.splitlines())
