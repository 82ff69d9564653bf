"""The ``swift sft`` / ``swift export`` command lines for one job, as argv lists and env.

Supported release: ms-swift 4.6.0. Why each flag is spelled as it is (checked against the
ms-swift 4.x sources and a real CPU run): ``docs/swift-compatibility.md``.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import msgspec

from swift_trainer.core.spec import EffectiveTrainArgs, JobSpec, Tracking, TrainArgs

SUPPORTED_MS_SWIFT_VERSION: Final = "4.6.0"

#: Env vars that make ``swift`` launch torchrun; a single-GPU job must not inherit them.
_TORCHRUN_ENV: Final = ("NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


class SwiftInvocation(msgspec.Struct, frozen=True):
    """An argv (never a shell string, so paths with spaces or quotes cannot inject) and env."""

    argv: tuple[str, ...]
    env: dict[str, str]
    #: Where swift writes ``logging.jsonl`` and ``checkpoint-N`` (sft) or the merged model
    #: (export).
    output_dir: str


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now; torchrun binds it moments later, so a race is unlikely.

    Two multi-GPU jobs on one host must not share a rendezvous port, so the runner never
    relies on torchrun's fixed default (29500).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _flag_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


#: Model names of the multimodal families ms-swift 4.x trains (Qwen2-VL, Qwen2.5-Omni,
#: InternVL, LLaVA, MiniCPM-V, GLM-4V, CogVLM, Ovis, ...), matched case-insensitively.
_MULTIMODAL_NAME: Final = re.compile(
    r"(?i)(?:^|[-_/.])(?:vl|omni|vision|visual|llava\w*|internvl\w*|minicpm-?v\w*|glm-?4v\w*"
    r"|cogvlm\w*|ovis\w*|paligemma\w*|idefics\w*|pixtral\w*|molmo\w*|janus\w*|qwen[\d.]*-?vl\w*"
    r"|deepseek-vl\w*|mplug-owl\w*|florence\w*)(?:$|[-_/.])",
)


def looks_multimodal(model_path: str) -> bool:
    """Whether the vision learning rates (``--vit_lr``, ``--aligner_lr``) apply to a model.

    A local model folder answers through its ``config.json`` (multimodal configs carry a
    ``vision_config``); a hub id by its name. A wrong "no" only drops the default separate
    vision learning rates (the LLM's rate is used instead); a wrong "yes" would crash a
    text-only run, hence the narrow name pattern.
    """
    config = Path(model_path) / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict):
            return any(
                key in data
                for key in ("vision_config", "visual", "vision_tower", "mm_vision_tower")
            )
    return bool(_MULTIMODAL_NAME.search(model_path))


def _train_flags(args: EffectiveTrainArgs, *, explicit: TrainArgs, multimodal: bool) -> list[str]:
    """The default parameters (plus overrides) under their ms-swift 4.x names."""
    vit_lr = args.vit_lr if multimodal or explicit.vit_lr is not None else None
    aligner_lr = args.aligner_lr if multimodal or explicit.aligner_lr is not None else None
    flags: list[tuple[str, object | None]] = [
        ("--tuner_type", args.train_type),
        ("--torch_dtype", args.torch_dtype),
        ("--num_train_epochs", args.num_epochs),
        ("--max_steps", args.max_steps),
        ("--per_device_train_batch_size", args.batch_size),
        ("--gradient_accumulation_steps", args.gradient_accumulation_steps),
        ("--learning_rate", args.learning_rate),
        ("--vit_lr", vit_lr),
        ("--aligner_lr", aligner_lr),
        ("--warmup_ratio", args.warmup_ratio),
        ("--weight_decay", args.weight_decay),
        ("--lr_scheduler_type", args.lr_scheduler_type),
        ("--eval_steps", args.eval_steps),
        ("--save_steps", args.save_steps),
        ("--save_total_limit", args.save_total_limit),
        ("--save_only_model", args.save_only_model),
        ("--logging_steps", args.logging_steps),
        ("--max_length", args.max_length),
        ("--dataloader_num_workers", args.dataloader_num_workers),
        ("--dataset_num_proc", args.dataset_num_proc),
        ("--gradient_checkpointing", args.gradient_checkpointing),
        ("--freeze_vit", args.freeze_vit),
        ("--seed", args.seed),
        ("--split_dataset_ratio", args.split_dataset_ratio),
        ("--deepspeed", args.deepspeed),
        ("--model_type", args.model_type),
        ("--template", args.template),
        ("--system", args.system),
    ]
    if args.train_type == "lora":
        # LoRA hyper-parameters mean nothing to a full fine-tune; leaving them out keeps
        # args.json honest about what was trained.
        flags += [
            ("--lora_rank", args.lora_rank),
            ("--lora_alpha", args.lora_alpha),
            ("--lora_dropout", args.lora_dropout),
        ]
    argv: list[str] = []
    for flag, value in flags:
        if value is not None:
            argv += [flag, _flag_value(value)]
    if args.target_modules:
        argv += ["--target_modules", *args.target_modules]
    return argv


def tracking(
    args: EffectiveTrainArgs,
    run_name: str | None,
    tags: Mapping[str, str],
    options: Tracking | None = None,
) -> tuple[list[str], dict[str, str]]:
    """``--report_to`` and the run's name and tags, as flags and as the trackers' env vars.

    Only names and tags are set here; credentials and tracking URLs (``WANDB_API_KEY``,
    ``MLFLOW_TRACKING_URI``, ``SWANLAB_API_KEY``) come from the runner's own environment,
    so they never enter an event, a command line or a log.
    """
    trackers = list(dict.fromkeys(args.report_to))
    argv = ["--report_to", *trackers]
    env: dict[str, str] = {}
    options = options or Tracking()
    run_name = options.name or run_name
    if run_name is None:
        return argv, env
    argv += ["--run_name", run_name]
    if "wandb" in trackers:
        env["WANDB_NAME"] = run_name
        labels = [f"{k}={v}" for k, v in tags.items()]
        env["WANDB_TAGS"] = ",".join([*labels, *options.tags])[:1024]
        if options.project:
            env["WANDB_PROJECT"] = options.project
        if options.entity:
            env["WANDB_ENTITY"] = options.entity
    if "mlflow" in trackers:
        env["MLFLOW_TAGS"] = json.dumps({**tags, **dict.fromkeys(options.tags, "true")})
        if options.project:
            env["MLFLOW_EXPERIMENT_NAME"] = options.project
    if "swanlab" in trackers:
        # ms-swift hands SwanLab its own arguments (``SwanlabArguments``), which default to
        # the output folder and project ``ms-swift``; SwanLab's env vars would be overridden.
        argv += ["--swanlab_exp_name", run_name]
        if options.project:
            argv += ["--swanlab_project", options.project]
        if options.entity:
            argv += ["--swanlab_workspace", options.entity]
    return argv, env


def split_datasets(data_path: str) -> list[str]:
    """Several datasets are given space-separated, as on swift's own command line.

    Each becomes its own argv element because ``--dataset`` is a list in ms-swift; passing
    ``"a b"`` as one element would ask for a single dataset with a space in its name.
    """
    return data_path.split()


def _method_args(spec: JobSpec) -> list[str]:
    if spec.method == "dpo":
        beta = ["--beta", _flag_value(spec.dpo_beta)] if spec.dpo_beta is not None else []
        return ["rlhf", "--rlhf_type", "dpo", *beta]
    return ["sft"]


def _local_file(file_id: str, dataset_files: Mapping[str, str]) -> str:
    try:
        return dataset_files[file_id]
    except KeyError:
        raise ValueError(
            f"uploaded dataset {file_id} has not been fetched to this runner"
        ) from None


def _dataset_args(spec: JobSpec, dataset_files: Mapping[str, str]) -> list[str]:
    if spec.training_file is not None:
        args = ["--dataset", _local_file(spec.training_file, dataset_files)]
    else:
        args = ["--dataset", *split_datasets(spec.data_path)]
    if spec.validation_file is not None:
        args += ["--val_dataset", _local_file(spec.validation_file, dataset_files)]
    return args


def _executable(swift_executable: str | Sequence[str]) -> list[str]:
    if isinstance(swift_executable, str):
        return [swift_executable]
    return list(swift_executable)


def _base_env(base_env: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ if base_env is None else base_env)
    # The supervisor captures output through files; without this, Python block-buffers
    # them and progress lines arrive in 8 KiB bursts.
    env["PYTHONUNBUFFERED"] = "1"
    return env


def job_output_dir(output_root: str | Path, spec: JobSpec) -> Path:
    """``spec.output_dir`` is validated relative (no ``..``), so this stays inside the root."""
    return Path(output_root) / spec.output_dir


def build_sft_command(
    spec: JobSpec,
    *,
    output_root: str | Path,
    gpu_ids: Sequence[int],
    resume_from: str | None = None,
    swift_executable: str | Sequence[str] = "swift",
    master_port: int | None = None,
    base_env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    gpu_uuids: Sequence[str] = (),
    dataset_files: Mapping[str, str] | None = None,
    run_name: str | None = None,
    run_tags: Mapping[str, str] | None = None,
    rendezvous: Mapping[str, str] | None = None,
) -> SwiftInvocation:
    """The ``swift sft`` invocation for one attempt of a job on the GPUs it was given.

    ``run_name`` and ``run_tags`` name the run in the experiment trackers (the job's id,
    its labels); see ``tracking``.

    ``dataset_files`` maps the uploaded files the spec names (``training_file``,
    ``validation_file``) to their local copies; a DPO job runs ``swift rlhf --rlhf_type dpo``.

    ``gpu_uuids``, when given, pin CUDA_VISIBLE_DEVICES by UUID: a UUID names the same
    physical card whatever enumeration order CUDA picks. Indices are used otherwise, with
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so CUDA's index N is NVML's index N.

    ``rendezvous`` is one rank's ``NNODES``, ``NODE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``
    and ``NPROC_PER_NODE`` when the job spans several hosts (``core.gang.rendezvous_env``).
    """
    if not gpu_ids:
        raise ValueError("a training job needs at least one GPU")
    if gpu_uuids and len(gpu_uuids) != len(gpu_ids):
        raise ValueError("gpu_uuids must name exactly the assigned GPUs")
    output_dir = job_output_dir(output_root, spec)
    argv = [
        *_executable(swift_executable),
        *_method_args(spec),
        "--model",
        spec.model_path,
        *_dataset_args(spec, dataset_files or {}),
        "--output_dir",
        str(output_dir),
        "--add_version",
        "false",
        "--callbacks",
        "graceful_exit",
        "--check_model",
        "false",
        *_train_flags(
            spec.effective_args,
            explicit=spec.train_args,
            multimodal=looks_multimodal(spec.model_path),
        ),
    ]
    track_argv, track_env = tracking(spec.effective_args, run_name, run_tags or {}, spec.tracking)
    argv += track_argv
    if resume_from:
        resume = Path(resume_from)
        if not resume.is_absolute():
            resume = output_dir / resume
        argv += ["--resume_from_checkpoint", str(resume)]
    argv += list(extra_args)

    env = _base_env(base_env)
    for key in _TORCHRUN_ENV:
        env.pop(key, None)
    env.update(track_env)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    visible = gpu_uuids if gpu_uuids else [str(i) for i in gpu_ids]
    env["CUDA_VISIBLE_DEVICES"] = ",".join(visible)
    if len(gpu_ids) > 1:
        env["NPROC_PER_NODE"] = str(len(gpu_ids))
        env["MASTER_PORT"] = str(master_port if master_port is not None else pick_free_port())
    if rendezvous:
        env.update(rendezvous)
    return SwiftInvocation(argv=tuple(argv), env=env, output_dir=str(output_dir))


def expected_export_path(checkpoint: str | Path, output_dir: str | Path | None = None) -> Path:
    """Where ``swift export --merge_lora true`` puts the merged model.

    ms-swift 4.x (``ExportArguments._init_output_dir``) appends ``-merged`` to the
    checkpoint folder's name when no ``--output_dir`` is given.
    """
    if output_dir is not None:
        return Path(output_dir)
    ckpt = Path(checkpoint)
    return ckpt.with_name(f"{ckpt.name}-merged")


def build_export_command(
    checkpoint: str | Path,
    *,
    output_dir: str | Path | None = None,
    overwrite: bool = False,
    gpu_ids: Sequence[int] = (),
    swift_executable: str | Sequence[str] = "swift",
    base_env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> SwiftInvocation:
    """``swift export`` merging a LoRA checkpoint into its base model.

    An export holds no GPU assignment from the scheduler, so unless GPUs are given it runs
    with ``CUDA_VISIBLE_DEVICES=""`` (CPU merge): it must never take memory on a card the
    scheduler has promised to a training job. The base model is found through the
    checkpoint's ``args.json`` (``load_args`` is true for export).
    """
    argv = [
        *_executable(swift_executable),
        "export",
        "--adapters",
        str(checkpoint),
        "--merge_lora",
        "true",
    ]
    if output_dir is not None:
        argv += ["--output_dir", str(output_dir)]
    if overwrite:
        argv += ["--exist_ok", "true"]
    argv += list(extra_args)
    env = _base_env(base_env)
    for key in _TORCHRUN_ENV:
        env.pop(key, None)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)
    return SwiftInvocation(
        argv=tuple(argv),
        env=env,
        output_dir=str(expected_export_path(checkpoint, output_dir)),
    )
