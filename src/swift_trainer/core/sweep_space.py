"""A sweep's search space, and the trials it expands to: a grid or seeded random samples.

Pure and deterministic: the same space, method, count and seed give the same trials in
the same order, on any machine (Python's ``random.Random`` is specified to be portable
for a given seed). A trial's spec is the base spec with each dotted path set, checked by
``decode_spec`` like any submitted spec.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import msgspec

from .errors import InvalidSpec
from .spec import JobSpec, Name, decode_spec

MAX_TRIALS: Final = 256
ParamValue = float | int | str | bool
Distribution = Literal["uniform", "log_uniform", "int_uniform"]
#: A dotted path into a job spec, e.g. ``train_args.learning_rate`` or ``priority``.
SpecPath = Annotated[str, msgspec.Meta(pattern=r"^[a-z_]+(\.[a-z_]+)*$", max_length=128)]


class Parameter(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One dimension: a list of ``values``, or a range ``min``..``max`` with a distribution."""

    values: tuple[ParamValue, ...] | None = None
    min: float | None = None
    max: float | None = None
    distribution: Distribution = "uniform"

    def __post_init__(self) -> None:
        if self.values is not None:
            if self.min is not None or self.max is not None:
                raise InvalidSpec("a parameter has values or min/max, not both")
            if not self.values:
                raise InvalidSpec("a parameter's values may not be empty")
            return
        if self.min is None or self.max is None:
            raise InvalidSpec("a parameter needs values, or both min and max")
        if not (math.isfinite(self.min) and math.isfinite(self.max)) or self.min > self.max:
            raise InvalidSpec(f"parameter range {self.min}..{self.max} is empty or not finite")
        if self.distribution == "log_uniform" and self.min <= 0:
            raise InvalidSpec("a log_uniform range must be above 0")


Trial = dict[str, ParamValue]
Goal = Literal["minimize", "maximize"]


class EarlyStop(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Stop a trial whose metric is worse than the median of the others at the same step."""

    type: Literal["median"] = "median"
    min_steps: Annotated[int, msgspec.Meta(ge=0)] = 0


class SweepSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What a user asks for: a base job spec and the values to try in it."""

    name: Name
    base: JobSpec
    parameters: dict[SpecPath, Parameter]
    method: Literal["grid", "random"] = "grid"
    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_TRIALS)] | None = None
    max_parallel: Annotated[int, msgspec.Meta(ge=1, le=MAX_TRIALS)] = 1
    #: ``loss``, ``eval_loss`` (from training progress) or ``eval:<dataset>``, a score of the
    #: evaluation after training (``base.eval``).
    metric: Annotated[
        str, msgspec.Meta(pattern=r"^(loss|eval_loss|eval:[A-Za-z0-9_.-]{1,64})$")
    ] = "loss"
    goal: Goal = "minimize"
    seed: Annotated[int, msgspec.Meta(ge=0)] = 0
    early_stop: EarlyStop | None = None


def sample(parameter: Parameter, rng: random.Random) -> ParamValue:
    """One value of ``parameter``, drawn with ``rng``; always inside its bounds."""
    if parameter.values is not None:
        return parameter.values[rng.randrange(len(parameter.values))]
    assert parameter.min is not None and parameter.max is not None
    low, high = parameter.min, parameter.max
    if parameter.distribution == "int_uniform":
        return rng.randint(math.ceil(low), math.floor(high))
    if parameter.distribution == "log_uniform":
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
        return min(max(value, low), high)
    return rng.uniform(low, high)


def expand(
    parameters: Mapping[str, Parameter],
    method: Literal["grid", "random"],
    count: int | None,
    seed: int,
) -> list[Trial]:
    """The trials of a sweep, in order; refuses an empty space or more than 256 trials."""
    names = sorted(parameters)
    if not names:
        raise InvalidSpec("a sweep needs at least one parameter")
    if method == "grid":
        ranged = [n for n in names if parameters[n].values is None]
        if ranged:
            raise InvalidSpec(f"a grid needs values for every parameter; {ranged[0]} has a range")
        size = math.prod(len(parameters[n].values or ()) for n in names)
        if size > MAX_TRIALS:
            raise InvalidSpec(f"the grid has {size} trials; at most {MAX_TRIALS}")
        axes = [parameters[n].values or () for n in names]
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)]
    if count is None or not 1 <= count <= MAX_TRIALS:
        raise InvalidSpec(f"a random sweep needs a count from 1 to {MAX_TRIALS}")
    rng = random.Random(seed)
    return [{n: sample(parameters[n], rng) for n in names} for _ in range(count)]


def trial_spec(
    base: JobSpec, values: Trial, *, labels: Mapping[str, str], output_dir: str
) -> JobSpec:
    """The base spec with each dotted path set, extra labels and its own output folder."""
    data: dict[str, Any] = msgspec.to_builtins(base)
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = data
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InvalidSpec(f"parameter {path!r}: {part!r} is not a section of the spec")
            node = child
        node[leaf] = value
    data["labels"] = {**data.get("labels", {}), **labels}
    data["output_dir"] = output_dir
    try:
        return decode_spec(data)
    except InvalidSpec as exc:
        raise InvalidSpec(f"trial {dict(values)}: {exc.message}") from exc
