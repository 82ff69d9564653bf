"""The swift command lines: ms-swift 4.x flag names, overrides, resume and GPU env."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from tests.runner.runner_helpers import make_spec

from swift_trainer.core.spec import JobSpec, Tracking, TrainArgs
from swift_trainer.runner.swift_command import (
    SUPPORTED_MS_SWIFT_VERSION,
    build_export_command,
    build_sft_command,
    expected_export_path,
    looks_multimodal,
    pick_free_port,
)


def flag(argv: tuple[str, ...], name: str) -> str | None:
    """The single value following ``name``; None when the flag is absent."""
    if name not in argv:
        return None
    return argv[argv.index(name) + 1]


def flag_values(argv: tuple[str, ...], name: str) -> list[str]:
    start = argv.index(name) + 1
    values = []
    for item in argv[start:]:
        if item.startswith("--"):
            break
        values.append(item)
    return values


def test_default_command_uses_ms_swift_4_names_and_seed_defaults(tmp_path: Path) -> None:
    inv = build_sft_command(make_spec(), output_root=tmp_path, gpu_ids=[3], base_env={})
    argv = inv.argv
    assert isinstance(argv, tuple)
    assert all(isinstance(a, str) for a in argv)
    assert argv[:2] == ("swift", "sft")
    assert SUPPORTED_MS_SWIFT_VERSION == "4.6.0"
    expected = {
        "--model": "Qwen/Qwen2.5-VL-7B-Instruct",
        "--output_dir": str(tmp_path / "jobs/job-1"),
        "--add_version": "false",
        "--callbacks": "graceful_exit",
        "--tuner_type": "lora",
        "--torch_dtype": "bfloat16",
        "--num_train_epochs": "1",
        "--per_device_train_batch_size": "1",
        "--gradient_accumulation_steps": "4",
        "--learning_rate": "0.0001",
        "--vit_lr": "1e-05",
        "--aligner_lr": "1e-05",
        "--lora_rank": "16",
        "--lora_alpha": "32",
        "--eval_steps": "100",
        "--save_steps": "100",
        "--save_total_limit": "2",
        "--logging_steps": "5",
        "--max_length": "8192",
        "--warmup_ratio": "0.05",
        "--dataloader_num_workers": "4",
        "--dataset_num_proc": "4",
        "--save_only_model": "true",
    }
    for name, value in expected.items():
        assert flag(argv, name) == value, name
    assert "--train_type" not in argv  # the 3.x spelling is only a deprecated alias in 4.x
    assert "--num_epochs" not in argv
    assert "--batch_size" not in argv
    assert "--resume_from_checkpoint" not in argv
    assert "--max_steps" not in argv  # None means "derived from epochs"
    assert flag_values(argv, "--dataset") == ["AI-ModelScope/coco#40"]
    assert inv.output_dir == str(tmp_path / "jobs/job-1")


def test_num_train_epochs_is_a_float_flag(tmp_path: Path) -> None:
    inv = build_sft_command(make_spec(num_epochs=2.5), output_root=tmp_path, gpu_ids=[0])
    assert flag(inv.argv, "--num_train_epochs") == "2.5"


def test_per_job_overrides_replace_the_defaults(tmp_path: Path) -> None:
    spec = make_spec(
        learning_rate=2e-4,
        batch_size=4,
        lora_rank=64,
        max_steps=500,
        target_modules=("q_proj", "v_proj"),
        save_only_model=False,
        freeze_vit=False,
        deepspeed="zero2",
        system="You are a 'helpful' assistant; rm -rf /",
        seed=7,
    )
    argv = build_sft_command(spec, output_root=tmp_path, gpu_ids=[0]).argv
    assert flag(argv, "--learning_rate") == "0.0002"
    assert flag(argv, "--per_device_train_batch_size") == "4"
    assert flag(argv, "--lora_rank") == "64"
    assert flag(argv, "--max_steps") == "500"
    assert flag_values(argv, "--target_modules") == ["q_proj", "v_proj"]
    assert flag(argv, "--save_only_model") == "false"
    assert flag(argv, "--freeze_vit") == "false"
    assert flag(argv, "--deepspeed") == "zero2"
    assert flag(argv, "--seed") == "7"
    # a value with spaces and shell characters stays one argv element, never interpreted
    assert flag(argv, "--system") == "You are a 'helpful' assistant; rm -rf /"


def test_full_fine_tune_has_no_lora_flags(tmp_path: Path) -> None:
    argv = build_sft_command(make_spec(train_type="full"), output_root=tmp_path, gpu_ids=[0]).argv
    assert flag(argv, "--tuner_type") == "full"
    assert "--lora_rank" not in argv
    assert "--lora_alpha" not in argv


def test_several_datasets_become_separate_elements(tmp_path: Path) -> None:
    spec = make_spec().__class__(
        data_path="a/b#100  local/data.jsonl swift/self-cognition#20",
        model_path="m",
        output_dir="o",
    )
    argv = build_sft_command(spec, output_root=tmp_path, gpu_ids=[0]).argv
    assert flag_values(argv, "--dataset") == [
        "a/b#100",
        "local/data.jsonl",
        "swift/self-cognition#20",
    ]


def test_resume_from_checkpoint(tmp_path: Path) -> None:
    ckpt = str(tmp_path / "jobs/job-1/checkpoint-200")
    argv = build_sft_command(
        make_spec(),
        output_root=tmp_path,
        gpu_ids=[0],
        resume_from=ckpt,
    ).argv
    assert flag(argv, "--resume_from_checkpoint") == ckpt
    relative = build_sft_command(
        make_spec(),
        output_root=tmp_path,
        gpu_ids=[0],
        resume_from="checkpoint-200",
    ).argv
    assert flag(relative, "--resume_from_checkpoint") == ckpt


def test_single_gpu_env_drops_inherited_torchrun_variables(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin", "NPROC_PER_NODE": "8", "MASTER_PORT": "29500"}
    env = build_sft_command(make_spec(), output_root=tmp_path, gpu_ids=[5], base_env=base).env
    assert env["CUDA_VISIBLE_DEVICES"] == "5"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"] == "/usr/bin"
    assert "NPROC_PER_NODE" not in env
    assert "MASTER_PORT" not in env
    assert base["NPROC_PER_NODE"] == "8"  # the caller's mapping is not modified


def test_multi_gpu_env_has_nproc_and_a_free_master_port(tmp_path: Path) -> None:
    env = build_sft_command(make_spec(), output_root=tmp_path, gpu_ids=[2, 3, 6], base_env={}).env
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3,6"
    assert env["NPROC_PER_NODE"] == "3"
    assert 1024 <= int(env["MASTER_PORT"]) <= 65535
    fixed = build_sft_command(
        make_spec(),
        output_root=tmp_path,
        gpu_ids=[0, 1],
        master_port=29611,
        base_env={},
    ).env
    assert fixed["MASTER_PORT"] == "29611"


def test_gpu_uuids_pin_the_cards(tmp_path: Path) -> None:
    env = build_sft_command(
        make_spec(),
        output_root=tmp_path,
        gpu_ids=[0, 1],
        gpu_uuids=["GPU-a", "GPU-b"],
        base_env={},
    ).env
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-a,GPU-b"
    with pytest.raises(ValueError, match="gpu_uuids"):
        build_sft_command(make_spec(), output_root=tmp_path, gpu_ids=[0, 1], gpu_uuids=["x"])


def test_configurable_executable_and_extra_args(tmp_path: Path) -> None:
    inv = build_sft_command(
        make_spec(),
        output_root=tmp_path,
        gpu_ids=[0],
        swift_executable=["/usr/bin/python3", "-m", "sim"],
        extra_args=["--simulate-step-seconds", "0.01"],
    )
    assert inv.argv[:4] == ("/usr/bin/python3", "-m", "sim", "sft")
    assert inv.argv[-2:] == ("--simulate-step-seconds", "0.01")


def test_a_job_needs_a_gpu(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one GPU"):
        build_sft_command(make_spec(), output_root=tmp_path, gpu_ids=[])


def test_pick_free_port_is_bindable() -> None:
    import socket

    port = pick_free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_export_command_and_artifact_path(tmp_path: Path) -> None:
    ckpt = tmp_path / "jobs/job-1/checkpoint-300"
    inv = build_export_command(ckpt, base_env={"NPROC_PER_NODE": "2"})
    assert inv.argv == ("swift", "export", "--adapters", str(ckpt), "--merge_lora", "true")
    assert inv.output_dir == str(tmp_path / "jobs/job-1/checkpoint-300-merged")
    assert expected_export_path(ckpt) == tmp_path / "jobs/job-1/checkpoint-300-merged"
    assert inv.env["CUDA_VISIBLE_DEVICES"] == ""  # CPU merge: never steal an assigned GPU
    assert "NPROC_PER_NODE" not in inv.env

    target = tmp_path / "exports/x"
    custom = build_export_command(ckpt, output_dir=target, overwrite=True, gpu_ids=[1])
    assert flag(custom.argv, "--output_dir") == str(target)
    assert flag(custom.argv, "--exist_ok") == "true"
    assert custom.output_dir == str(target)
    assert custom.env["CUDA_VISIBLE_DEVICES"] == "1"


def test_vision_learning_rates_only_reach_multimodal_models(tmp_path: Path) -> None:
    """ms-swift 4.6.0 picks its multimodal optimizer when --vit_lr or --aligner_lr is given,
    which crashes on a text-only model; the seed's defaults are therefore held back there."""
    text = JobSpec(data_path="d", model_path="Qwen/Qwen2.5-7B-Instruct", output_dir="o")
    argv = build_sft_command(text, output_root=tmp_path, gpu_ids=[0], base_env={}).argv
    assert "--vit_lr" not in argv
    assert "--aligner_lr" not in argv
    assert flag(argv, "--check_model") == "false"

    explicit = JobSpec(
        data_path="d",
        model_path="Qwen/Qwen2.5-7B-Instruct",
        output_dir="o",
        train_args=TrainArgs(vit_lr=2e-5),
    )
    argv = build_sft_command(explicit, output_root=tmp_path, gpu_ids=[0], base_env={}).argv
    assert flag(argv, "--vit_lr") == "2e-05"
    assert "--aligner_lr" not in argv

    vl = build_sft_command(make_spec(), output_root=tmp_path, gpu_ids=[0], base_env={}).argv
    assert flag(vl, "--vit_lr") == "1e-05"
    assert flag(vl, "--aligner_lr") == "1e-05"


@pytest.mark.parametrize(
    ("model", "multimodal"),
    [
        ("Qwen/Qwen2.5-VL-7B-Instruct", True),
        ("Qwen/Qwen2-VL-2B-Instruct", True),
        ("OpenGVLab/InternVL3-8B", True),
        ("llava-hf/llava-1.5-7b-hf", True),
        ("openbmb/MiniCPM-V-2_6", True),
        ("Qwen/Qwen2.5-Omni-7B", True),
        ("THUDM/glm-4v-9b", True),
        ("Qwen/Qwen2.5-7B-Instruct", False),
        ("meta-llama/Llama-3.1-8B", False),
        ("deepseek-ai/DeepSeek-V3", False),
        ("mistralai/Mistral-7B-v0.1", False),
        ("Qwen/QwQ-32B", False),
    ],
)
def test_multimodal_models_are_recognised_by_name(model: str, multimodal: bool) -> None:
    assert looks_multimodal(model) is multimodal


def test_a_local_model_is_judged_by_its_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')
    assert not looks_multimodal(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_5_vl", "vision_config": {}}')
    assert looks_multimodal(str(tmp_path))


# --- uploaded files and DPO -----------------------------------------------------------------


def test_uploaded_files_become_the_local_dataset_and_val_dataset(tmp_path: Path) -> None:
    spec = JobSpec(
        model_path="m",
        output_dir="o",
        training_file="file-train1",
        validation_file="file-valid1",
    )
    local = {"file-train1": "/cache/file-train1/ab.jsonl", "file-valid1": "/cache/v/cd.jsonl"}
    argv = build_sft_command(spec, output_root=tmp_path, gpu_ids=[0], dataset_files=local).argv
    assert argv[1] == "sft"
    assert flag_values(argv, "--dataset") == ["/cache/file-train1/ab.jsonl"]
    assert flag_values(argv, "--val_dataset") == ["/cache/v/cd.jsonl"]


def test_an_uploaded_file_that_was_not_fetched_is_an_error_not_a_guess(tmp_path: Path) -> None:
    spec = JobSpec(model_path="m", output_dir="o", training_file="file-train1")
    with pytest.raises(ValueError, match="file-train1 has not been fetched"):
        build_sft_command(spec, output_root=tmp_path, gpu_ids=[0])


def test_dpo_runs_swift_rlhf_with_its_beta(tmp_path: Path) -> None:
    spec = JobSpec(data_path="d.jsonl", model_path="m", output_dir="o", method="dpo", dpo_beta=0.2)
    argv = build_sft_command(spec, output_root=tmp_path, gpu_ids=[0], swift_executable="swift").argv
    assert argv[:4] == ("swift", "rlhf", "--rlhf_type", "dpo")
    assert flag(argv, "--beta") == "0.2"
    plain = JobSpec(data_path="d.jsonl", model_path="m", output_dir="o", method="dpo")
    assert "--beta" not in build_sft_command(plain, output_root=tmp_path, gpu_ids=[0]).argv


def test_tensorboard_is_the_default_tracker(tmp_path: Path) -> None:
    inv = build_sft_command(make_spec(), output_root=tmp_path, gpu_ids=[0], base_env={})
    assert flag_values(inv.argv, "--report_to") == ["tensorboard"]
    assert "--run_name" not in inv.argv


def test_trackers_get_the_job_as_run_name_and_its_labels_as_tags(tmp_path: Path) -> None:
    spec = make_spec(report_to=("wandb", "mlflow", "swanlab", "tensorboard"))
    secret = {"WANDB_API_KEY": "wk-secret", "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    inv = build_sft_command(
        spec,
        output_root=tmp_path,
        gpu_ids=[0],
        base_env=secret,
        run_name="job-1",
        run_tags={"job_id": "job-1", "sweep": "s1"},
    )
    assert flag_values(inv.argv, "--report_to") == ["wandb", "mlflow", "swanlab", "tensorboard"]
    assert flag(inv.argv, "--run_name") == "job-1"
    assert inv.env["WANDB_NAME"] == "job-1"
    assert inv.env["WANDB_TAGS"] == "job_id=job-1,sweep=s1"
    assert inv.env["MLFLOW_TAGS"] == '{"job_id": "job-1", "sweep": "s1"}'
    assert flag(inv.argv, "--swanlab_exp_name") == "job-1"
    assert "--swanlab_project" not in inv.argv
    # Credentials reach swift only through the runner's environment, never its argv.
    assert inv.env["WANDB_API_KEY"] == "wk-secret"
    assert not any("secret" in a or "5000" in a for a in inv.argv)


def test_a_swanlab_project_and_workspace_are_swift_flags(tmp_path: Path) -> None:
    """ms-swift passes SwanLab its own ``--swanlab_*`` arguments, so env vars would lose."""
    spec = msgspec.structs.replace(
        make_spec(report_to=("swanlab",)), tracking=Tracking(project="p", entity="team")
    )
    inv = build_sft_command(spec, output_root=tmp_path, gpu_ids=[0], base_env={}, run_name="j")
    assert flag(inv.argv, "--swanlab_project") == "p"
    assert flag(inv.argv, "--swanlab_workspace") == "team"
    assert not any(k.startswith("SWANLAB_") for k in inv.env)


def test_report_to_takes_known_trackers_only() -> None:
    from swift_trainer.core.errors import InvalidSpec
    from swift_trainer.core.spec import decode_spec

    base = {"data_path": "d", "model_path": "m", "output_dir": "o"}
    assert decode_spec({**base, "train_args": {"report_to": ["mlflow"]}}).train_args.report_to == (
        "mlflow",
    )
    for bad in (["comet"], []):
        with pytest.raises(InvalidSpec):
            decode_spec({**base, "train_args": {"report_to": bad}})
