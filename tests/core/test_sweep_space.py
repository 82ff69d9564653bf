"""A sweep's search space: grid expansion, seeded sampling within bounds, trial specs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swift_trainer.core.errors import InvalidSpec
from swift_trainer.core.spec import JobSpec
from swift_trainer.core.sweep_space import MAX_TRIALS, Parameter, expand, trial_spec

BASE = JobSpec(data_path="d", model_path="m", output_dir="out/sweep", labels={"team": "a"})


def test_a_grid_is_every_combination_in_a_stable_order() -> None:
    trials = expand(
        {
            "train_args.learning_rate": Parameter(values=(1e-4, 1e-5, 1e-6)),
            "train_args.lora_rank": Parameter(values=(8, 16)),
        },
        "grid",
        None,
        0,
    )
    assert len(trials) == 6
    assert trials[0] == {"train_args.learning_rate": 1e-4, "train_args.lora_rank": 8}
    assert trials[1] == {"train_args.learning_rate": 1e-4, "train_args.lora_rank": 16}
    assert len({tuple(sorted(t.items())) for t in trials}) == 6


def test_a_grid_refuses_ranges_and_more_than_256_trials() -> None:
    with pytest.raises(InvalidSpec, match="has a range"):
        expand({"priority": Parameter(min=0, max=9)}, "grid", None, 0)
    big = {f"p{i}": Parameter(values=(1, 2)) for i in range(9)}  # 512 combinations
    with pytest.raises(InvalidSpec, match="at most 256"):
        expand(big, "grid", None, 0)
    with pytest.raises(InvalidSpec, match="count"):
        expand({"priority": Parameter(min=0, max=9)}, "random", 257, 0)


def test_a_parameter_is_values_or_a_range() -> None:
    with pytest.raises(InvalidSpec):
        Parameter()
    with pytest.raises(InvalidSpec):
        Parameter(values=(1,), min=0, max=1)
    with pytest.raises(InvalidSpec):
        Parameter(min=2, max=1)
    with pytest.raises(InvalidSpec, match="above 0"):
        Parameter(min=0, max=1, distribution="log_uniform")


ranges = st.tuples(
    st.floats(min_value=1e-8, max_value=1e3), st.floats(min_value=1e-8, max_value=1e3)
).map(sorted)


@given(
    lr=ranges,
    rank=st.tuples(st.integers(1, 512), st.integers(1, 512)).map(sorted),
    dropout=st.tuples(st.floats(0, 1), st.floats(0, 1)).map(sorted),
    count=st.integers(1, MAX_TRIALS),
    seed=st.integers(0, 2**32),
)
def test_random_trials_stay_within_bounds_and_repeat_with_the_seed(
    lr: list[float], rank: list[int], dropout: list[float], count: int, seed: int
) -> None:
    space = {
        "train_args.learning_rate": Parameter(min=lr[0], max=lr[1], distribution="log_uniform"),
        "train_args.lora_rank": Parameter(min=rank[0], max=rank[1], distribution="int_uniform"),
        "train_args.lora_dropout": Parameter(min=dropout[0], max=dropout[1]),
        "train_args.lr_scheduler_type": Parameter(values=("cosine", "linear")),
    }
    trials = expand(space, "random", count, seed)
    assert len(trials) == count
    assert trials == expand(space, "random", count, seed)
    for t in trials:
        assert lr[0] <= t["train_args.learning_rate"] <= lr[1]
        assert isinstance(t["train_args.lora_rank"], int)
        assert rank[0] <= t["train_args.lora_rank"] <= rank[1]
        assert dropout[0] <= t["train_args.lora_dropout"] <= dropout[1]
        assert t["train_args.lr_scheduler_type"] in ("cosine", "linear")


def test_another_seed_gives_other_trials() -> None:
    space = {"train_args.learning_rate": Parameter(min=1e-6, max=1e-3)}
    assert expand(space, "random", 5, 1) != expand(space, "random", 5, 2)


def test_a_trial_spec_sets_each_path_and_keeps_the_rest() -> None:
    spec = trial_spec(
        BASE,
        {"train_args.learning_rate": 1e-5, "priority": 8, "train_args.lora_rank": 32},
        labels={"sweep": "s1", "trial": "3"},
        output_dir="out/sweep/s1/trial-3",
    )
    assert spec.train_args.learning_rate == 1e-5
    assert spec.train_args.lora_rank == 32
    assert spec.priority == 8
    assert spec.labels == {"team": "a", "sweep": "s1", "trial": "3"}
    assert spec.output_dir == "out/sweep/s1/trial-3"
    assert spec.model_path == "m"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("train_args.learning_rte", 1e-5),
        ("train_args.lora_rank", 0.5),
        ("priority", 11),
        ("model_path.x", 1),
    ],
)
def test_a_path_or_value_the_spec_cannot_take_is_refused(path: str, value: float) -> None:
    with pytest.raises(InvalidSpec):
        trial_spec(BASE, {path: value}, labels={}, output_dir="o")


def test_log_uniform_spreads_over_orders_of_magnitude() -> None:
    trials = expand(
        {"x": Parameter(min=1e-6, max=1e-2, distribution="log_uniform")}, "random", 200, 7
    )
    exponents = {math.floor(math.log10(float(t["x"]))) for t in trials}
    assert exponents == {-6, -5, -4, -3}
