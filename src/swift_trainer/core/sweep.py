"""The sweep aggregate: one search over a job spec, its trials and its end, as events.

Each sweep is one stream, ``sweep-<id>``. The trials are expanded once, when the sweep is
created (``sweep_space.expand``), and recorded in ``SweepCreated``, so a replay never
samples again. Trials are ordinary jobs; the sweep records when each began and ended.
``decide`` keeps the one rule that must hold against the stored stream: at most
``max_parallel`` trials are under way (begun, not ended) at once. A process manager
(``projections/experiments``) sends the commands; these events live outside the job event
union, like the access and webhook events.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Final

import msgspec

from .commands import AnySweepCommand, BeginTrial, CreateSweep, EndTrial, StopSweep
from .errors import DomainError, InvalidTransition
from .events import Event, decode_tagged
from .ids import JOB_ID_PATTERN
from .spec import JobSpec
from .sweep_space import Goal, ParamValue, SweepSpec, expand, trial_spec

STREAM_PREFIX: Final = "sweep-"


class SweepNotFound(DomainError):
    code = "sweep_not_found"


class SweepAlreadyExists(DomainError):
    code = "sweep_already_exists"


class SweepFull(DomainError):
    """A trial was begun while ``max_parallel`` are under way: the caller waits for one."""

    code = "sweep_full"


class TrialPlan(msgspec.Struct, frozen=True):
    """One planned trial: its job id, parameter values and job spec."""

    job_id: Annotated[str, msgspec.Meta(pattern=JOB_ID_PATTERN)]
    params: dict[str, ParamValue]
    spec: JobSpec


def trial_job_id(sweep_id: str, index: int) -> str:
    """The job id of trial ``index`` (``<sweep>-t<index>``: a valid job id)."""
    return f"{sweep_id}-t{index}"


def plan_trials(sweep_id: str, spec: SweepSpec) -> tuple[TrialPlan, ...]:
    """Every trial, in order; refuses a space or a path the job spec cannot take."""
    trials = expand(spec.parameters, spec.method, spec.count, spec.seed)
    return tuple(
        TrialPlan(
            job_id=trial_job_id(sweep_id, index),
            params=values,
            spec=trial_spec(
                spec.base,
                values,
                labels={"sweep": sweep_id, "trial": str(index)},
                output_dir=f"{spec.base.output_dir}/{sweep_id}/trial-{index}",
            ),
        )
        for index, values in enumerate(trials)
    )


# --- events -----------------------------------------------------------------------------------


class SweepEvent(Event, frozen=True):
    sweep_id: str


class SweepCreated(SweepEvent, frozen=True, tag=True):
    spec: SweepSpec
    trials: tuple[TrialPlan, ...]


class TrialBegun(SweepEvent, frozen=True, tag=True):
    index: int
    job_id: str


class TrialEnded(SweepEvent, frozen=True, tag=True):
    index: int
    outcome: str
    metric: float | None = None


class SweepStopped(SweepEvent, frozen=True, tag=True):
    intent: str
    reason: str


class SweepFinished(SweepEvent, frozen=True, tag=True):
    """Every begun trial has ended, and no more will begin."""

    best_index: int | None = None


AnySweepEvent = SweepCreated | TrialBegun | TrialEnded | SweepStopped | SweepFinished
SWEEP_EVENT_TYPES: Final[dict[str, type[SweepEvent]]] = {
    cls.__name__: cls for cls in AnySweepEvent.__args__
}
_decoder: Final[msgspec.json.Decoder[AnySweepEvent]] = msgspec.json.Decoder(AnySweepEvent)


def is_sweep_stream(stream_id: str) -> bool:
    return stream_id.startswith(STREAM_PREFIX)


def sweep_stream(sweep_id: str) -> str:
    return STREAM_PREFIX + sweep_id


def decode_sweep_event(type_name: str, payload: bytes) -> AnySweepEvent:
    return decode_tagged(_decoder, SWEEP_EVENT_TYPES, type_name, payload, "sweep")


# --- state ------------------------------------------------------------------------------------


class TrialRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    outcome: str | None = None
    metric: float | None = None


class SweepState(msgspec.Struct, frozen=True):
    sweep_id: str
    version: int = 0
    spec: SweepSpec | None = None
    trials: tuple[TrialPlan, ...] = ()
    created_at: datetime | None = None
    #: Trial index -> what the sweep knows of it; present once begun.
    begun: dict[int, TrialRecord] = {}
    stopped: str | None = None
    stop_reason: str | None = None
    finished: bool = False
    best_index: int | None = None

    @property
    def exists(self) -> bool:
        return self.spec is not None

    @property
    def under_way(self) -> int:
        return sum(1 for record in self.begun.values() if record.outcome is None)

    @property
    def next_index(self) -> int | None:
        """The next trial to begin, or None when all have begun or the sweep stopped."""
        if self.stopped is not None or self.finished or len(self.begun) >= len(self.trials):
            return None
        return len(self.begun)


def best_trial(records: Mapping[int, TrialRecord], goal: Goal) -> int | None:
    """The succeeded trial with the best metric (lowest index on ties), or None."""
    scored = [
        (i, r.metric)
        for i, r in sorted(records.items())
        if r.outcome == "succeeded" and r.metric is not None
    ]
    if not scored:
        return None
    pick = min if goal == "minimize" else max
    return pick(scored, key=lambda item: item[1])[0]


def median_says_stop(own: float, others: list[float], goal: Goal) -> bool:
    """Whether ``own`` is worse than the median of ``others`` (none: never)."""
    if not others:
        return False
    middle = statistics.median(others)
    return own > middle if goal == "minimize" else own < middle


def decide_sweep(state: SweepState, command: AnySweepCommand, now: datetime) -> list[AnySweepEvent]:
    """Refuse ``command`` with a DomainError, or return the events it causes."""
    sid = state.sweep_id
    if isinstance(command, CreateSweep):
        if state.exists:
            raise SweepAlreadyExists(f"a sweep with id {sid!r} already exists; choose another")
        plans = plan_trials(sid, command.spec)
        return [SweepCreated(at=now, sweep_id=sid, spec=command.spec, trials=plans)]
    if not state.exists:
        raise SweepNotFound(f"sweep {sid!r} does not exist")
    assert state.spec is not None
    match command:
        case BeginTrial(index=index):
            if index in state.begun:
                return []
            if state.next_index != index:
                raise InvalidTransition(
                    f"sweep {sid!r} cannot begin trial {index}: the next is {state.next_index}"
                )
            if state.under_way >= state.spec.max_parallel:
                raise SweepFull(
                    f"sweep {sid!r} has {state.under_way} trials under way, its max_parallel"
                )
            return [TrialBegun(at=now, sweep_id=sid, index=index, job_id=trial_job_id(sid, index))]
        case EndTrial(index=index, outcome=outcome, metric=metric):
            record = state.begun.get(index)
            if record is None:
                raise InvalidTransition(f"trial {index} of sweep {sid!r} has not begun")
            if record.outcome is not None:
                return []
            ended = TrialEnded(at=now, sweep_id=sid, index=index, outcome=outcome, metric=metric)
            after = evolve_sweep(state, ended)
            return [ended, *_finish_if_done(after, now)]
        case StopSweep(intent=intent, reason=reason):
            if state.finished or state.stopped in ("cancel", intent):
                return []
            stopped = SweepStopped(at=now, sweep_id=sid, intent=intent, reason=reason)
            return [stopped, *_finish_if_done(evolve_sweep(state, stopped), now)]
    raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover


def _finish_if_done(state: SweepState, now: datetime) -> list[AnySweepEvent]:
    assert state.spec is not None
    if state.finished or state.under_way or state.next_index is not None:
        return []
    best = best_trial(state.begun, state.spec.goal)
    return [SweepFinished(at=now, sweep_id=state.sweep_id, best_index=best)]


def evolve_sweep(state: SweepState, event: AnySweepEvent) -> SweepState:
    s = msgspec.structs.replace
    state = s(state, version=state.version + 1)
    match event:
        case SweepCreated(spec=spec, trials=trials, at=at):
            return s(state, spec=spec, trials=trials, created_at=at)
        case TrialBegun(index=index):
            return s(state, begun={**state.begun, index: TrialRecord()})
        case TrialEnded(index=index, outcome=outcome, metric=metric):
            record = TrialRecord(outcome=outcome, metric=metric)
            return s(state, begun={**state.begun, index: record})
        case SweepStopped(intent=intent, reason=reason):
            return s(state, stopped=intent, stop_reason=reason)
        case SweepFinished(best_index=best):
            return s(state, finished=True, best_index=best)
    raise AssertionError(f"unhandled event {event!r}")  # pragma: no cover
