"""Request and response bodies of the sweep routes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from ...core.commands import SweepId
from ...core.sweep_space import SweepSpec


class CreateSweepRequest(SweepSpec, frozen=True, kw_only=True):
    """A sweep file: ``name``, ``base`` (a job spec), ``parameters`` and how to search."""

    sweep_id: (
        Annotated[SweepId, msgspec.Meta(description="Your own id; one is made up if absent.")]
        | None
    ) = None

    def to_spec(self) -> SweepSpec:
        fields = msgspec.structs.asdict(self)
        fields.pop("sweep_id")
        return SweepSpec(**fields)


class TrialView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One trial: its job, the values it tries, where it stands and its metric."""

    index: int
    job_id: str
    params: dict[str, float | int | str | bool]
    #: ``pending`` until it is submitted, then its job's status.
    status: str
    #: How the sweep recorded its end (``early_stopped`` when the median rule stopped it).
    outcome: str | None = None
    metric: float | None = None
    step: int | None = None


class SweepView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A sweep at a glance; ``trials`` only on the single-sweep read."""

    sweep_id: str
    name: str
    #: ``running``, ``stopping``, ``cancelling``, ``finished``.
    status: str
    method: str
    metric: str
    goal: str
    max_parallel: int
    trials_total: int
    #: Trials per status (``pending`` for those not submitted yet).
    counts: dict[str, int]
    percent_done: float
    created_at: datetime | None = None
    stop_reason: str | None = None
    best: TrialView | None = None
    trials: list[TrialView] | None = None


class SweepListResponse(msgspec.Struct, frozen=True, kw_only=True):
    sweeps: list[SweepView]


class SweepCommandResponse(msgspec.Struct, frozen=True, kw_only=True):
    sweep_id: str
    status: str
    message: str
    #: Trials asked to stop (or cancel) by this request.
    trials_signalled: int = 0
