"""The sweep aggregate: begun and ended trials, ``max_parallel``, stop, finish, best trial."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swift_trainer.core import commands as c
from swift_trainer.core.aggregates import decide_any, fold, initial, stream_of
from swift_trainer.core.errors import InvalidTransition
from swift_trainer.core.events import encode_event
from swift_trainer.core.spec import JobSpec
from swift_trainer.core.store import EventMetadata, RecordedEvent
from swift_trainer.core.sweep import (
    SweepAlreadyExists,
    SweepCreated,
    SweepFinished,
    SweepFull,
    SweepNotFound,
    SweepState,
    TrialRecord,
    best_trial,
    decide_sweep,
    evolve_sweep,
    median_says_stop,
)
from swift_trainer.core.sweep_space import EarlyStop, Parameter, SweepSpec

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BASE = JobSpec(data_path="d", model_path="m", output_dir="out")


def sweep_spec(values: int = 6, max_parallel: int = 2, goal: str = "minimize") -> SweepSpec:
    return SweepSpec(
        name="lr",
        base=BASE,
        parameters={
            "train_args.learning_rate": Parameter(
                values=tuple(1e-5 * (i + 1) for i in range(values))
            )
        },
        max_parallel=max_parallel,
        goal=goal,  # type: ignore[arg-type]
        early_stop=EarlyStop(min_steps=10),
    )


def step(state: SweepState, command: c.AnySweepCommand) -> tuple[SweepState, list]:
    events = decide_sweep(state, command, T0)
    for event in events:
        state = evolve_sweep(state, event)
    return state, events


def created(values: int = 6, max_parallel: int = 2) -> SweepState:
    state, _ = step(
        SweepState(sweep_id="s1"),
        c.CreateSweep(sweep_id="s1", spec=sweep_spec(values, max_parallel)),
    )
    return state


def test_creation_plans_every_trial_as_a_labelled_job() -> None:
    state = created()
    assert len(state.trials) == 6
    first = state.trials[0]
    assert first.job_id == "s1-t0"
    assert first.params == {"train_args.learning_rate": 1e-5}
    assert first.spec.labels == {"sweep": "s1", "trial": "0"}
    assert first.spec.output_dir == "out/s1/trial-0"
    with pytest.raises(SweepAlreadyExists):
        decide_sweep(state, c.CreateSweep(sweep_id="s1", spec=sweep_spec()), T0)
    with pytest.raises(SweepNotFound):
        decide_sweep(SweepState(sweep_id="x"), c.BeginTrial(sweep_id="x", index=0), T0)


def test_trials_begin_in_order_and_never_past_max_parallel() -> None:
    state = created(max_parallel=2)
    state, _ = step(state, c.BeginTrial(sweep_id="s1", index=0))
    with pytest.raises(InvalidTransition):
        decide_sweep(state, c.BeginTrial(sweep_id="s1", index=2), T0)
    state, _ = step(state, c.BeginTrial(sweep_id="s1", index=1))
    with pytest.raises(SweepFull):
        decide_sweep(state, c.BeginTrial(sweep_id="s1", index=2), T0)
    assert step(state, c.BeginTrial(sweep_id="s1", index=1))[1] == []  # a repeat: no-op
    state, _ = step(state, c.EndTrial(sweep_id="s1", index=0, outcome="succeeded", metric=0.5))
    state, events = step(state, c.BeginTrial(sweep_id="s1", index=2))
    assert events and state.under_way == 2


def test_the_sweep_finishes_with_the_best_trial_once_all_ended() -> None:
    state = created(values=3, max_parallel=3)
    for i in range(3):
        state, _ = step(state, c.BeginTrial(sweep_id="s1", index=i))
    state, _ = step(state, c.EndTrial(sweep_id="s1", index=0, outcome="succeeded", metric=0.9))
    state, _ = step(state, c.EndTrial(sweep_id="s1", index=1, outcome="failed", metric=0.1))
    state, events = step(state, c.EndTrial(sweep_id="s1", index=2, outcome="succeeded", metric=0.4))
    assert isinstance(events[-1], SweepFinished) and events[-1].best_index == 2
    assert state.finished and state.best_index == 2


def test_a_stop_ends_the_sweep_once_the_trials_under_way_have_ended() -> None:
    state = created()
    state, _ = step(state, c.BeginTrial(sweep_id="s1", index=0))
    state, events = step(state, c.StopSweep(sweep_id="s1", intent="cancel", reason="enough"))
    assert state.stopped == "cancel" and not state.finished and state.next_index is None
    assert step(state, c.StopSweep(sweep_id="s1", intent="stop"))[1] == []
    state, events = step(state, c.EndTrial(sweep_id="s1", index=0, outcome="cancelled"))
    assert isinstance(events[-1], SweepFinished) and events[-1].best_index is None


def test_best_and_median_rules() -> None:
    records = {
        0: TrialRecord("succeeded", 0.3),
        1: TrialRecord("succeeded", 0.1),
        2: TrialRecord("failed", 0.0),
    }
    assert best_trial(records, "minimize") == 1
    assert best_trial(records, "maximize") == 0
    assert best_trial({}, "minimize") is None
    assert median_says_stop(0.9, [0.1, 0.5, 0.3], "minimize")
    assert not median_says_stop(0.2, [0.1, 0.5, 0.3], "minimize")
    assert median_says_stop(0.2, [0.1, 0.5, 0.3], "maximize")
    assert not median_says_stop(5.0, [], "minimize")


def test_the_handler_routes_sweep_commands_to_their_own_stream_and_folds_them() -> None:
    command = c.CreateSweep(sweep_id="s1", spec=sweep_spec())
    stream = stream_of(command)
    assert stream == "sweep-s1"
    events = decide_any(initial(stream), command, T0)
    recorded = [
        RecordedEvent(
            position=1,
            stream_id=stream,
            version=1,
            event_id="e1",
            type="SweepCreated",
            schema_version=1,
            payload=encode_event(events[0]),
            metadata=EventMetadata(),
            recorded_at=T0,
        )
    ]
    state = fold(stream, recorded)
    assert isinstance(state, SweepState) and len(state.trials) == 6
    assert isinstance(events[0], SweepCreated)


@settings(max_examples=200)
@given(
    max_parallel=st.integers(1, 4),
    trials=st.integers(1, 8),
    moves=st.lists(
        st.tuples(st.sampled_from(["begin", "end", "stop"]), st.integers(0, 7)), max_size=60
    ),
)
def test_model_max_parallel_is_never_exceeded(
    max_parallel: int, trials: int, moves: list[tuple[str, int]]
) -> None:
    """Any interleaving of begins, ends and stops: the aggregate agrees with a simple model."""
    state = created(values=trials, max_parallel=max_parallel)
    began: set[int] = set()
    ended: set[int] = set()
    stopped = False
    for move, n in moves:
        if move == "begin":
            index = len(began)
            try:
                state, _ = step(state, c.BeginTrial(sweep_id="s1", index=index))
                began.add(index)
            except (SweepFull, InvalidTransition):
                assert stopped or index >= trials or len(began - ended) >= max_parallel
            else:
                assert not stopped and len(began - ended) <= max_parallel
        elif move == "end":
            live = sorted(began - ended)
            if live:
                index = live[n % len(live)]
                state, _ = step(
                    state,
                    c.EndTrial(sweep_id="s1", index=index, outcome="succeeded", metric=float(n)),
                )
                ended.add(index)
        else:
            state, _ = step(state, c.StopSweep(sweep_id="s1"))
            stopped = True
        assert state.under_way == len(began - ended) <= max_parallel
        done = began == ended and (stopped or len(began) == trials)
        assert state.finished == done
