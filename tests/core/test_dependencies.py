"""Job dependencies: the pure verdict, the cycle search and the aggregate's ``waiting``."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.dependencies import Broken, Met, Outcome, Waiting, find_cycle, verdict
from swift_trainer.core.errors import InvalidSpec
from swift_trainer.core.job import JobState, JobStatus, decide, evolve, initial_state
from swift_trainer.core.spec import Dependency, JobSpec, decode_spec

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OUTCOMES: tuple[Outcome, ...] = ("succeeded", "failed", "cancelled", "deleted")


def spec(*after: Dependency, auto_start: bool = True) -> JobSpec:
    return JobSpec(
        data_path="d", model_path="m", output_dir="out/b", after=after, auto_start=auto_start
    )


def run(state: JobState, command: c.AnyJobCommand) -> tuple[JobState, list[e.AnyJobEvent]]:
    events = decide(state, command, T0)
    for event in events:
        state = evolve(state, event)
    return state, events


@pytest.mark.parametrize(
    ("on", "outcome", "expected"),
    [
        ("succeeded", "succeeded", Met),
        ("succeeded", "failed", Broken),
        ("succeeded", "cancelled", Broken),
        ("succeeded", "deleted", Broken),
        ("failed", "failed", Met),
        ("failed", "succeeded", Broken),
        ("failed", "cancelled", Broken),
        ("ended", "succeeded", Met),
        ("ended", "failed", Met),
        ("ended", "cancelled", Met),
        ("ended", "deleted", Met),
    ],
)
def test_each_condition_against_each_outcome(on: str, outcome: Outcome, expected: type) -> None:
    result = verdict([Dependency(job="a", on=on)], {"a": outcome})  # type: ignore[arg-type]
    assert isinstance(result, expected)
    if isinstance(result, Broken):
        assert "job a" in result.reason and outcome in result.reason


def test_a_job_that_has_not_ended_keeps_the_wait_and_is_named() -> None:
    after = [Dependency(job="a"), Dependency(job="b", on="ended")]
    result = verdict(after, {"a": "succeeded"})
    assert result == Waiting(pending=(Dependency(job="b", on="ended"),))
    assert isinstance(verdict(after, {"a": "succeeded", "b": "failed"}), Met)


def test_one_broken_condition_wins_over_pending_ones() -> None:
    after = [Dependency(job="a"), Dependency(job="b")]
    result = verdict(after, {"b": "failed"})
    assert isinstance(result, Broken)
    assert result.reason == "job b failed; this job waited for it to succeed"


@given(
    st.lists(
        st.tuples(st.sampled_from("abcd"), st.sampled_from(["succeeded", "failed", "ended"])),
        max_size=6,
    ),
    st.dictionaries(st.sampled_from("abcd"), st.sampled_from(OUTCOMES)),
)
def test_met_exactly_when_every_condition_holds(
    conditions: list[tuple[str, str]], outcomes: dict[str, Outcome]
) -> None:
    after = [Dependency(job=j, on=on) for j, on in conditions]  # type: ignore[arg-type]
    holds = {"succeeded": {"succeeded"}, "failed": {"failed"}, "ended": set(OUTCOMES)}
    result = verdict(after, outcomes)
    all_hold = all(outcomes.get(d.job) in holds[d.on] for d in after)
    any_broken = any(d.job in outcomes and outcomes[d.job] not in holds[d.on] for d in after)
    assert isinstance(result, Met) == all_hold
    assert isinstance(result, Broken) == any_broken


def test_find_cycle_follows_the_graph_and_names_the_loop() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["new"], "x": []}
    assert find_cycle("new", ["a"], lambda j: graph.get(j, [])) == ("new", "a", "b", "c", "new")
    assert find_cycle("new", ["x"], lambda j: graph.get(j, [])) is None
    assert find_cycle("new", ["new"], lambda j: []) == ("new", "new")
    # A diamond is no cycle, and each job is looked up once.
    looked: list[str] = []
    diamond = {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}
    assert find_cycle("n", ["a"], lambda j: looked.append(j) or diamond[j]) is None
    assert sorted(looked) == ["a", "b", "c", "d"]


def test_a_job_with_after_waits_and_is_queued_by_the_release() -> None:
    state, events = run(initial_state("b"), c.SubmitJob(job_id="b", spec=spec(Dependency(job="a"))))
    assert [type(x) for x in events] == [e.JobSubmitted, e.JobWaiting]
    assert state.status is JobStatus.WAITING
    state, events = run(state, c.ReleaseWaitingJob(job_id="b"))
    assert state.status is JobStatus.QUEUED
    assert isinstance(events[0], e.JobQueued) and events[0].reason == "dependencies met"
    # A second release (a redelivery, or another releaser) changes nothing.
    assert decide(state, c.ReleaseWaitingJob(job_id="b"), T0) == []


def test_a_waiting_job_can_be_cancelled_stopped_and_reprioritised() -> None:
    waiting, _ = run(initial_state("b"), c.SubmitJob(job_id="b", spec=spec(Dependency(job="a"))))
    cancelled, _ = run(waiting, c.CancelJob(job_id="b", reason="job a failed"))
    assert cancelled.status is JobStatus.CANCELLED and cancelled.stop_reason == "job a failed"
    assert decide(cancelled, c.ReleaseWaitingJob(job_id="b"), T0) == []
    moved, _ = run(waiting, c.ChangePriority(job_id="b", priority=9))
    assert moved.priority == 9 and moved.status is JobStatus.WAITING
    stopped, _ = run(waiting, c.StopJob(job_id="b"))
    assert stopped.status is JobStatus.STOPPED
    # Started again, it waits again: its conditions still apply.
    again, _ = run(stopped, c.StartJob(job_id="b"))
    assert again.status is JobStatus.WAITING


def test_a_held_job_with_after_waits_once_started() -> None:
    held, _ = run(
        initial_state("b"),
        c.SubmitJob(job_id="b", spec=spec(Dependency(job="a"), auto_start=False)),
    )
    assert held.status is JobStatus.HELD
    started, events = run(held, c.StartJob(job_id="b"))
    assert [type(x) for x in events] == [e.JobReleased, e.JobWaiting]
    assert started.status is JobStatus.WAITING


def test_a_job_cannot_wait_for_itself() -> None:
    with pytest.raises(InvalidSpec, match="cannot wait for itself"):
        decide(initial_state("b"), c.SubmitJob(job_id="b", spec=spec(Dependency(job="b"))), T0)


def test_after_is_checked_at_decoding() -> None:
    base = {"data_path": "d", "model_path": "m", "output_dir": "o"}
    with pytest.raises(InvalidSpec):
        decode_spec({**base, "after": [{"job": "a", "on": "finished"}]})
    with pytest.raises(InvalidSpec):
        decode_spec({**base, "after": [{"job": "a/b"}]})
    with pytest.raises(InvalidSpec, match="at most 32"):
        decode_spec({**base, "after": [{"job": f"j{i}"} for i in range(33)]})
    assert decode_spec({**base, "after": [{"job": "a"}]}).after == (Dependency(job="a"),)


def test_a_submission_recorded_before_after_existed_still_decodes() -> None:
    old = (
        b'{"type":"JobSubmitted","at":"2025-01-01T00:00:00Z","job_id":"x",'
        b'"spec":{"data_path":"d","model_path":"m","output_dir":"o"}}'
    )
    event = e.decode_event("JobSubmitted", old)
    assert isinstance(event, e.JobSubmitted) and event.spec.after == ()
    waiting = e.encode_event(e.JobWaiting(at=T0, job_id="x"))
    assert msgspec.json.decode(waiting)["type"] == "JobWaiting"
    assert isinstance(e.decode_event("JobWaiting", waiting), e.JobWaiting)
