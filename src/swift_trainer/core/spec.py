"""What a user asks for when submitting a job: the job spec and its swift training args.

The defaults are fixed swift parameters (``EffectiveTrainArgs``); a job overrides any of
them in ``train_args``. Unknown keys are rejected rather than passed through, so a typo such as
``learning_rte`` fails at submission instead of silently training with the default.
"""

from __future__ import annotations

import posixpath
from typing import Annotated, Any, Final, Literal

import msgspec

from .errors import InvalidSpec
from .failure import RetryPolicy

Priority = Annotated[int, msgspec.Meta(ge=0, le=10, description="0-10, larger is more urgent")]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Ratio = Annotated[float, msgspec.Meta(ge=0, le=1)]
ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]

#: Experiment trackers swift reports to (``--report_to``); credentials come from the runner.
Tracker = Literal["tensorboard", "wandb", "swanlab", "mlflow"]
DeepSpeedPreset = Literal["zero0", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload"]

DEFAULT_PRIORITY: Final = 5
MAX_GPUS_PER_JOB: Final = 64
#: The longest ``max_runtime`` a job may ask for: 365 days.
MAX_RUNTIME_LIMIT_S: Final = 365 * 86_400
_DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
MAX_NODES_PER_JOB: Final = 64
#: A host label's key or value: letters, digits and ``_ . / -``, as runners are given them.
HOST_LABEL_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$(?!\n)"
HostLabel = Annotated[str, msgspec.Meta(pattern=HOST_LABEL_PATTERN)]


class TrainArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Overrides of the default swift parameters; ``None`` means "use the default".

    Names are the service's (``train_type``, ``num_epochs``); the runner maps them to the
    flags of the ms-swift release it supports.
    """

    num_epochs: PositiveFloat | None = None
    batch_size: PositiveInt | None = None
    learning_rate: PositiveFloat | None = None
    vit_lr: PositiveFloat | None = None
    aligner_lr: PositiveFloat | None = None
    lora_rank: PositiveInt | None = None
    lora_alpha: PositiveInt | None = None
    lora_dropout: Ratio | None = None
    target_modules: tuple[Name, ...] | None = None
    gradient_accumulation_steps: PositiveInt | None = None
    eval_steps: PositiveInt | None = None
    save_steps: PositiveInt | None = None
    save_total_limit: PositiveInt | None = None
    logging_steps: PositiveInt | None = None
    max_length: PositiveInt | None = None
    max_steps: PositiveInt | None = None
    warmup_ratio: Ratio | None = None
    weight_decay: Annotated[float, msgspec.Meta(ge=0)] | None = None
    lr_scheduler_type: Name | None = None
    dataloader_num_workers: NonNegativeInt | None = None
    dataset_num_proc: PositiveInt | None = None
    save_only_model: bool | None = None
    gradient_checkpointing: bool | None = None
    freeze_vit: bool | None = None
    train_type: Literal["lora", "full"] | None = None
    torch_dtype: Literal["bfloat16", "float16", "float32"] | None = None
    seed: NonNegativeInt | None = None
    split_dataset_ratio: Ratio | None = None
    deepspeed: (
        Literal["zero0", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload"] | None
    ) = None
    model_type: Name | None = None
    template: Name | None = None
    system: ShortText | None = None
    #: Where swift reports metrics; TensorBoard when unset. Several are allowed.
    report_to: Annotated[tuple[Tracker, ...], msgspec.Meta(min_length=1, max_length=4)] | None = (
        None
    )


class Tracking(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Where a tracker files the run: project, team (``entity``), run name and tags.

    No credentials: API keys and tracking URLs come from the runner's environment.
    """

    project: Name | None = None
    entity: Name | None = None
    #: The run's name; the job's id when unset.
    name: Name | None = None
    tags: Annotated[tuple[Name, ...], msgspec.Meta(max_length=32)] = ()


class EvalSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Evaluate the trained model with ``swift eval`` (EvalScope) once training succeeds.

    ``datasets`` are EvalScope dataset names (``gsm8k``, ``arc``, ...); ``args`` are more
    ``swift eval`` flags, ``{"eval_backend": "Native"}`` for ``--eval_backend Native``.
    """

    datasets: Annotated[tuple[Name, ...], msgspec.Meta(min_length=1, max_length=16)]
    #: At most this many samples per dataset (``--eval_limit``).
    limit: Annotated[int, msgspec.Meta(ge=1)] | None = None
    args: dict[Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")], ShortText] = {}


class EffectiveTrainArgs(msgspec.Struct, frozen=True):
    """The defaults with a job's overrides applied: what the runner will pass."""

    num_epochs: float = 1
    batch_size: int = 1
    learning_rate: float = 1e-4
    vit_lr: float = 1e-5
    aligner_lr: float = 1e-5
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float | None = None
    target_modules: tuple[str, ...] | None = None
    gradient_accumulation_steps: int = 4
    eval_steps: int = 100
    save_steps: int = 100
    save_total_limit: int = 2
    logging_steps: int = 5
    max_length: int = 8192
    max_steps: int | None = None
    warmup_ratio: float = 0.05
    weight_decay: float | None = None
    lr_scheduler_type: str | None = None
    dataloader_num_workers: int = 4
    dataset_num_proc: int = 4
    save_only_model: bool = True
    gradient_checkpointing: bool | None = None
    freeze_vit: bool | None = None
    train_type: Literal["lora", "full"] = "lora"
    torch_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    seed: int | None = None
    split_dataset_ratio: float | None = None
    deepspeed: str | None = None
    model_type: str | None = None
    template: str | None = None
    system: str | None = None
    report_to: tuple[str, ...] = ("tensorboard",)


def effective_train_args(overrides: TrainArgs) -> EffectiveTrainArgs:
    """Merge a job's overrides over the defaults."""
    given = {k: v for k, v in msgspec.structs.asdict(overrides).items() if v is not None}
    return msgspec.structs.replace(EffectiveTrainArgs(), **given)


#: An uploaded dataset's id (``/v1/files``): ``file-`` and letters or digits.
FILE_ID_PATTERN: Final = r"^file-[A-Za-z0-9]{1,60}$(?!\n)"
FileId = Annotated[str, msgspec.Meta(pattern=FILE_ID_PATTERN)]
MetadataKey = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
MetadataValue = Annotated[str, msgspec.Meta(max_length=512)]
#: ``supervised``: ``swift sft``; ``dpo``: ``swift rlhf --rlhf_type dpo`` on preference pairs.
TrainingMethod = Literal["supervised", "dpo"]
#: What a job waits for in another: its success, its failure, or its end of any kind.
DependencyCondition = Literal["succeeded", "failed", "ended"]
#: At most this many conditions per job.
MAX_DEPENDENCIES: Final = 32


class Dependency(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One condition of ``after``: the job waits until job ``job`` has ended as ``on`` says."""

    job: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$(?!\n)")]
    on: DependencyCondition = "succeeded"


class JobSpec(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True
):
    """Everything needed to run a job, as submitted. Immutable except for ``priority``.

    The dataset is ``data_path`` (hub ids or paths on the runner, as swift takes them) or
    ``training_file``, an uploaded file that every runner fetches from the object store, so
    hosts need no shared filesystem. Fields added after the first release all have defaults,
    so a spec recorded before them still decodes.
    """

    #: Empty when the dataset is ``training_file``.
    data_path: ShortText = ""
    model_path: ShortText
    output_dir: ShortText
    priority: Priority = DEFAULT_PRIORITY
    gpu_count: Annotated[int, msgspec.Meta(ge=1, le=MAX_GPUS_PER_JOB)] = 1
    min_gpu_memory_gb: Annotated[float, msgspec.Meta(gt=0, le=4096)] | None = None
    #: Case-insensitive substring of the GPU name, e.g. ``H100`` or ``A100-SXM4-80GB``.
    gpu_name: Name | None = None
    train_args: TrainArgs = TrainArgs()
    auto_start: bool = True
    #: How often a job lost with its runner (or failed to launch) is queued again.
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=20)] = 2
    labels: dict[Name, Annotated[str, msgspec.Meta(max_length=256)]] = {}
    #: Uploaded files (``/v1/files``) to train and evaluate on (``--val_dataset``).
    training_file: FileId | None = None
    validation_file: FileId | None = None
    method: TrainingMethod = "supervised"
    #: DPO's beta (``--beta``); ms-swift's default when unset.
    dpo_beta: Annotated[float, msgspec.Meta(gt=0, le=10)] | None = None
    #: Merge the LoRA adapter of the last checkpoint as soon as training succeeds.
    auto_export: bool = False
    #: Kept for the OpenAI-compatible API: a name part for the fine-tuned model, and the
    #: caller's key-value metadata (listing filters on it).
    suffix: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    metadata: dict[MetadataKey, MetadataValue] = {}
    #: Who the job belongs to: the submitting API key's owner (the API sets it, whatever the
    #: body says); None for jobs from the operator's CLI and from before owners existed.
    owner: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    #: Jobs this one waits for (status ``waiting``) before it is queued.
    after: tuple[Dependency, ...] = ()
    #: How experiment trackers (``train_args.report_to``) file the run.
    tracking: Tracking | None = None
    #: Whether a job of higher priority may stop this one (with a checkpoint) to take its
    #: GPUs; it goes back to the queue and resumes from the checkpoint.
    preemptible: bool = True
    #: Seconds this job gets to write its checkpoint when preempted (default: the
    #: scheduler's ``PREEMPT_GRACE_S``).
    preempt_grace_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] | None = None
    #: The most it may run, over all its attempts: seconds, or ``"90m"``, ``"6h"``, ``"2d"``.
    max_runtime: (
        Annotated[int, msgspec.Meta(ge=1)] | Annotated[str, msgspec.Meta(max_length=32)] | None
    ) = None
    #: How a failed attempt is retried, by the cause of its failure.
    retry: RetryPolicy = RetryPolicy()
    #: How many hosts the job spans; it takes ``gpu_count`` GPUs on each of ``nodes``
    #: distinct runners, all at once.
    nodes: Annotated[int, msgspec.Meta(ge=1, le=MAX_NODES_PER_JOB)] = 1
    #: Runs only on runners whose labels (``runner --label KEY=VALUE``) include all these.
    host_labels: dict[HostLabel, HostLabel] = {}
    #: Evaluate the result after a successful training, on the same GPUs.
    eval: EvalSpec | None = None

    def __post_init__(self) -> None:
        check_output_dir(self.output_dir)
        if self.max_runtime is not None:
            parse_duration(self.max_runtime)
        if len(self.labels) > 32:
            raise InvalidSpec("at most 32 labels per job")
        if len(self.metadata) > 16:
            raise InvalidSpec("at most 16 metadata pairs per job")
        if not self.data_path and self.training_file is None:
            raise InvalidSpec("a job needs a dataset: give data_path or training_file")
        if self.data_path and self.training_file is not None:
            raise InvalidSpec("give data_path or training_file, not both")
        if self.dpo_beta is not None and self.method != "dpo":
            raise InvalidSpec("dpo_beta applies only to method 'dpo'")
        if len(self.after) > MAX_DEPENDENCIES:
            raise InvalidSpec(f"at most {MAX_DEPENDENCIES} conditions in after")
        if len(self.host_labels) > 16:
            raise InvalidSpec("at most 16 host labels per job")

    @property
    def effective_args(self) -> EffectiveTrainArgs:
        return effective_train_args(self.train_args)

    @property
    def max_runtime_s(self) -> float | None:
        """``max_runtime`` in seconds, or None when the job has no time limit."""
        return None if self.max_runtime is None else parse_duration(self.max_runtime)


def parse_duration(value: int | str) -> int:
    """Seconds from a number of seconds or a text such as ``"90m"``, ``"6h"``, ``"2d"``."""
    if isinstance(value, int):
        seconds = value
    else:
        text = value.strip().lower()
        unit = text[-1:] if text[-1:] in _DURATION_UNITS else "s"
        number = text[:-1] if text[-1:] in _DURATION_UNITS else text
        if not number.isdigit():
            raise InvalidSpec(
                f"max_runtime {value!r} is not a duration: give seconds, or a whole number "
                "with s, m, h or d (such as '90m', '6h', '2d')"
            )
        seconds = int(number) * _DURATION_UNITS[unit]
    if not 1 <= seconds <= MAX_RUNTIME_LIMIT_S:
        raise InvalidSpec(
            f"max_runtime {value!r} must be between 1 second and "
            f"{MAX_RUNTIME_LIMIT_S // 86_400} days"
        )
    return seconds


def check_output_dir(output_dir: str) -> None:
    """An output dir is relative to the runner's OUTPUT_ROOT and may not climb out of it."""
    if output_dir.startswith(("/", "\\")) or (len(output_dir) > 1 and output_dir[1] == ":"):
        raise InvalidSpec(
            f"output_dir {output_dir!r} must be relative: it is placed under the runner's "
            "OUTPUT_ROOT",
        )
    if "\x00" in output_dir or "\\" in output_dir:
        raise InvalidSpec(f"output_dir {output_dir!r} contains a forbidden character")
    normalised = posixpath.normpath(output_dir)
    if normalised in (".", "") or normalised == ".." or normalised.startswith("../"):
        raise InvalidSpec(
            f"output_dir {output_dir!r} must name a folder inside OUTPUT_ROOT (no '..' escapes)",
        )


def decode_spec(data: Any) -> JobSpec:
    """Build a spec from untrusted builtins, turning every validation problem into InvalidSpec."""
    try:
        return msgspec.convert(data, type=JobSpec)
    except msgspec.ValidationError as exc:
        raise InvalidSpec(str(exc)) from exc
