"""The job spec: the seed's defaults, overrides, and validation of what users submit."""

from __future__ import annotations

import posixpath
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swift_trainer.core.errors import InvalidSpec
from swift_trainer.core.spec import (
    DEFAULT_PRIORITY,
    MAX_GPUS_PER_JOB,
    EffectiveTrainArgs,
    JobSpec,
    TrainArgs,
    check_output_dir,
    decode_spec,
    effective_train_args,
)

#: SEED.md, "Swift training parameters (fixed in the seed; defaults here, overridable per job)".
SEED_DEFAULTS: dict[str, Any] = {
    "num_epochs": 1,
    "batch_size": 1,
    "learning_rate": 1e-4,
    "vit_lr": 1e-5,
    "aligner_lr": 1e-5,
    "lora_rank": 16,
    "lora_alpha": 32,
    "gradient_accumulation_steps": 4,
    "eval_steps": 100,
    "save_steps": 100,
    "save_total_limit": 2,
    "logging_steps": 5,
    "max_length": 8192,
    "warmup_ratio": 0.05,
    "dataloader_num_workers": 4,
    "dataset_num_proc": 4,
    "save_only_model": True,
    "train_type": "lora",
    "torch_dtype": "bfloat16",
}

#: The seed's create request (SEED.md, "Create request and responses").
SEED_REQUEST = {
    "data_path": "AI-ModelScope/coco#20000",
    "model_path": "Qwen/Qwen2.5-VL-7B-Instruct",
    "output_dir": "output/training_001",
    "priority": 9,
}


def spec_with(**fields: Any) -> dict[str, Any]:
    return {**SEED_REQUEST, **fields}


# --- defaults and overrides -----------------------------------------------------------------


def test_effective_args_default_to_the_seed_parameters_exactly() -> None:
    args = msgspec.structs.asdict(EffectiveTrainArgs())
    for name, value in SEED_DEFAULTS.items():
        assert args[name] == value, name
        if isinstance(value, bool | str):
            assert type(args[name]) is type(value), name  # True == 1, so check bools apart
    # Everything the seed did not fix is left to ms-swift's own default, but the tracker:
    # TensorBoard, so every run leaves event files in its output folder.
    assert args["report_to"] == ("tensorboard",)
    assert {k for k, v in args.items() if v is not None} - {"report_to"} == set(SEED_DEFAULTS)


def test_a_spec_without_train_args_trains_with_the_seed_parameters() -> None:
    spec = decode_spec(SEED_REQUEST)
    assert spec.train_args == TrainArgs()
    assert spec.effective_args == EffectiveTrainArgs()
    assert effective_train_args(TrainArgs()) == EffectiveTrainArgs()


def test_every_overridable_arg_has_an_effective_value() -> None:
    assert TrainArgs.__struct_fields__ == EffectiveTrainArgs.__struct_fields__


def test_overrides_replace_only_what_they_name() -> None:
    spec = decode_spec(
        spec_with(
            train_args={
                "learning_rate": 2e-5,
                "num_epochs": 3,
                "train_type": "full",
                "target_modules": ["q_proj", "v_proj"],
                "save_only_model": False,
                "dataloader_num_workers": 0,
                "deepspeed": "zero3",
            }
        )
    )
    args = spec.effective_args
    assert (args.learning_rate, args.num_epochs, args.train_type) == (2e-5, 3, "full")
    assert args.target_modules == ("q_proj", "v_proj")
    assert args.save_only_model is False, "False is an override, not 'unset'"
    assert args.dataloader_num_workers == 0, "0 is an override, not 'unset'"
    assert args.deepspeed == "zero3"
    untouched = set(SEED_DEFAULTS) - {
        "learning_rate",
        "num_epochs",
        "train_type",
        "save_only_model",
        "dataloader_num_workers",
    }
    for name in untouched:
        assert getattr(args, name) == SEED_DEFAULTS[name], name


def test_spec_defaults() -> None:
    spec = decode_spec({k: v for k, v in SEED_REQUEST.items() if k != "priority"})
    assert spec.priority == DEFAULT_PRIORITY == 5
    assert (spec.gpu_count, spec.auto_start, spec.max_retries) == (1, True, 2)
    assert (spec.min_gpu_memory_gb, spec.gpu_name, spec.labels) == (None, None, {})


def test_a_spec_round_trips_and_omits_its_defaults() -> None:
    spec = decode_spec(spec_with(train_args={"lora_rank": 8}, labels={"team": "vision"}))
    wire = msgspec.json.encode(spec)
    assert msgspec.json.decode(wire) == {
        **SEED_REQUEST,
        "train_args": {"lora_rank": 8},
        "labels": {"team": "vision"},
    }
    assert decode_spec(msgspec.json.decode(wire)) == spec


def test_a_spec_is_immutable() -> None:
    spec = decode_spec(SEED_REQUEST)
    with pytest.raises(AttributeError):
        spec.priority = 1  # type: ignore[misc]


# --- validation -----------------------------------------------------------------------------


def refused(data: Any) -> str:
    with pytest.raises(InvalidSpec) as info:
        decode_spec(data)
    assert info.value.code == "invalid_spec"
    return info.value.message


def test_an_unknown_train_arg_is_refused_rather_than_ignored() -> None:
    message = refused(spec_with(train_args={"learning_rte": 1e-4}))
    assert "learning_rte" in message


def test_an_unknown_spec_field_is_refused() -> None:
    message = refused(spec_with(gpu_ids=[0, 1]))
    assert "gpu_ids" in message


@pytest.mark.parametrize("missing", ["data_path", "model_path", "output_dir"])
def test_required_fields(missing: str) -> None:
    message = refused({k: v for k, v in SEED_REQUEST.items() if k != missing})
    assert missing in message


@pytest.mark.parametrize("priority", [0, 5, 10])
def test_priority_from_0_to_10_is_accepted(priority: int) -> None:
    assert decode_spec(spec_with(priority=priority)).priority == priority


@pytest.mark.parametrize("priority", [-1, 11, 100, 2.5, "9", None, True])
def test_priority_outside_0_to_10_is_refused(priority: Any) -> None:
    message = refused(spec_with(priority=priority))
    assert "priority" in message


@pytest.mark.parametrize("gpu_count", [1, 8, MAX_GPUS_PER_JOB])
def test_gpu_count_within_bounds_is_accepted(gpu_count: int) -> None:
    assert decode_spec(spec_with(gpu_count=gpu_count)).gpu_count == gpu_count


@pytest.mark.parametrize("gpu_count", [0, -1, MAX_GPUS_PER_JOB + 1])
def test_gpu_count_outside_bounds_is_refused(gpu_count: int) -> None:
    assert "gpu_count" in refused(spec_with(gpu_count=gpu_count))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_retries", -1),
        ("max_retries", 21),
        ("min_gpu_memory_gb", 0),
        ("min_gpu_memory_gb", 5000),
        ("gpu_name", ""),
        ("data_path", ""),
        ("model_path", "x" * 1025),
        ("auto_start", "yes"),
        ("labels", {"": "x"}),
        ("labels", {"k": "v" * 257}),
        ("train_args", {"batch_size": 0}),
        ("train_args", {"learning_rate": 0}),
        ("train_args", {"lora_dropout": 1.5}),
        ("train_args", {"warmup_ratio": -0.1}),
        ("train_args", {"train_type": "qlora"}),
        ("train_args", {"torch_dtype": "int8"}),
        ("train_args", {"deepspeed": "zero4"}),
        ("train_args", {"target_modules": [""]}),
        ("train_args", []),
    ],
)
def test_out_of_range_values_are_refused(field: str, value: Any) -> None:
    refused(spec_with(**{field: value}))


def test_at_most_32_labels() -> None:
    labels = {f"k{i}": "v" for i in range(32)}
    assert len(decode_spec(spec_with(labels=labels)).labels) == 32
    message = refused(spec_with(labels={**labels, "one-more": "v"}))
    assert "at most 32 labels" in message


@pytest.mark.parametrize("data", [None, [], "spec", 5, b"{}"])
def test_a_spec_that_is_not_an_object_is_refused(data: Any) -> None:
    refused(data)


# --- output_dir -----------------------------------------------------------------------------

ACCEPTED_DIRS = [
    "output/training_001",
    "training_001",
    "a/b/c/d",
    "./out",
    "out/",
    "a/../b",
    "..hidden",
    "out/..x/y",
    "out.d/v1.2",
]
REFUSED_DIRS = [
    "/abs/out",
    "/",
    "\\\\server\\share",
    "\\out",
    "C:\\out",
    "C:/out",
    "c:out",
    "..",
    "../out",
    "a/../../out",
    "out/../..",
    "./..",
    "out\\sub",
    ".",
    "./",
    "a/..",
    "out\x00",
]


@pytest.mark.parametrize("output_dir", ACCEPTED_DIRS)
def test_nested_relative_output_dirs_are_accepted(output_dir: str) -> None:
    check_output_dir(output_dir)
    assert decode_spec(spec_with(output_dir=output_dir)).output_dir == output_dir


@pytest.mark.parametrize("output_dir", REFUSED_DIRS)
def test_output_dirs_that_escape_output_root_are_refused(output_dir: str) -> None:
    message = refused(spec_with(output_dir=output_dir))
    assert repr(output_dir) in message
    assert "OUTPUT_ROOT" in message or "forbidden character" in message


@pytest.mark.parametrize("output_dir", ["/etc", "..", "a\\b"])
def test_a_spec_built_in_code_checks_its_output_dir_too(output_dir: str) -> None:
    with pytest.raises(InvalidSpec):
        JobSpec(data_path="d", model_path="m", output_dir=output_dir)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.sampled_from(["..", ".", "", "a", "b.c", "..d", "\\", ":", "C:", "/", "\x00"]),
        max_size=6,
    ).map("/".join)
    | st.text(max_size=20)
)
def test_an_accepted_output_dir_always_stays_inside_output_root(output_dir: str) -> None:
    root = "/srv/outputs"
    try:
        check_output_dir(output_dir)
    except InvalidSpec:
        return
    resolved = posixpath.normpath(posixpath.join(root, output_dir))
    assert resolved.startswith(root + "/"), (output_dir, resolved)
    assert "\\" not in output_dir
    assert "\x00" not in output_dir


# --- uploaded files, training method, OpenAI fields ---------------------------------------


def test_an_uploaded_file_can_be_the_dataset_instead_of_data_path() -> None:
    spec = decode_spec({"model_path": "m", "output_dir": "o/ft", "training_file": "file-abc1"})
    assert spec.data_path == ""
    assert spec.training_file == "file-abc1"


def test_a_job_needs_exactly_one_dataset_source() -> None:
    assert "data_path or training_file" in refused({"model_path": "m", "output_dir": "o/x"})
    both = refused(spec_with(training_file="file-abc1"))
    assert "not both" in both


@pytest.mark.parametrize("file_id", ["abc", "file-", "file-a/b", "file-abc\n", "file-" + "a" * 61])
def test_file_ids_must_look_like_file_ids(file_id: str) -> None:
    message = refused({"model_path": "m", "output_dir": "o/x", "training_file": file_id})
    assert "training_file" in message


def test_dpo_beta_needs_the_dpo_method_and_methods_are_a_closed_set() -> None:
    assert "dpo_beta" in refused(spec_with(dpo_beta=0.1))
    assert "method" in refused(spec_with(method="ppo"))
    assert decode_spec(spec_with(method="dpo", dpo_beta=0.1)).dpo_beta == 0.1


def test_at_most_16_metadata_pairs() -> None:
    assert "16 metadata" in refused(spec_with(metadata={f"k{i}": "v" for i in range(17)}))
