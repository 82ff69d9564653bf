"""The GPU ledger: one GPU is never claimed by two live job attempts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from swift_trainer.core import aggregates
from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.errors import DomainError, GpuTaken, StaleAssignment
from swift_trainer.core.gpu_ledger import (
    Claim,
    LedgerState,
    decide_ledger,
    evolve_ledger,
    replay_ledger,
)
from swift_trainer.core.ids import GPU_LEDGER_STREAM
from swift_trainer.core.store import EventMetadata, RecordedEvent

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def run(state: LedgerState, command: c.LedgerCommand) -> tuple[LedgerState, list[e.LedgerEvent]]:
    events = decide_ledger(state, command, T0)
    for event in events:
        state = evolve_ledger(state, event)
    return state, events


def claim(job: str, attempt: int, runner: str, *gpus: int) -> c.ClaimGpus:
    return c.ClaimGpus(job_id=job, attempt=attempt, runner_id=runner, gpu_ids=gpus)


def test_a_claim_holds_its_gpus() -> None:
    state, events = run(LedgerState(), claim("a", 1, "r1", 0, 1))
    assert events == [e.GpusClaimed(at=T0, job_id="a", attempt=1, runner_id="r1", gpu_ids=(0, 1))]
    assert state.claims == {"a": Claim("a", 1, "r1", (0, 1))}
    assert state.holder("r1", 0) == state.holder("r1", 1) == Claim("a", 1, "r1", (0, 1))
    assert state.holder("r1", 2) is None
    assert state.holder("r2", 0) is None
    assert state.version == 1


def test_a_gpu_held_by_another_job_is_refused() -> None:
    state, _ = run(LedgerState(), claim("a", 1, "r1", 0, 1))
    with pytest.raises(GpuTaken) as info:
        run(state, claim("b", 1, "r1", 1, 2))
    assert info.value.code == "gpu_taken"
    assert "GPU 1 of runner 'r1' is held by attempt 1 of job 'a'" in info.value.message
    # The same index on another runner is another GPU.
    state, events = run(state, claim("b", 1, "r2", 1, 2))
    assert len(events) == 1


def test_claiming_what_the_attempt_holds_is_a_no_op() -> None:
    state, _ = run(LedgerState(), claim("a", 1, "r1", 0, 1))
    again, events = run(state, claim("a", 1, "r1", 1, 0))
    assert events == []
    assert again == state


def test_the_same_attempt_cannot_claim_other_gpus() -> None:
    state, _ = run(LedgerState(), claim("a", 1, "r1", 0))
    with pytest.raises(GpuTaken, match="already holds GPUs"):
        run(state, claim("a", 1, "r1", 1))
    with pytest.raises(GpuTaken):
        run(state, claim("a", 1, "r2", 0))


def test_a_later_attempt_supersedes_the_earlier_claim() -> None:
    state, _ = run(LedgerState(), claim("a", 1, "r1", 0))
    state, events = run(state, claim("a", 2, "r1", 0, 1))
    assert [type(x) for x in events] == [e.GpusReleased, e.GpusClaimed]
    assert events[0] == e.GpusReleased(
        at=T0, job_id="a", attempt=1, runner_id="r1", gpu_ids=(0,), reason="superseded by attempt 2"
    )
    assert state.claims == {"a": Claim("a", 2, "r1", (0, 1))}
    with pytest.raises(StaleAssignment):
        run(state, claim("a", 1, "r1", 3))


def test_release_frees_the_gpus_and_unknown_releases_are_no_ops() -> None:
    state, _ = run(LedgerState(), claim("a", 3, "r1", 0, 1))
    for stale in (
        c.ReleaseGpus(job_id="a", attempt=2),
        c.ReleaseGpus(job_id="b", attempt=3),
    ):
        same, events = run(state, stale)
        assert events == []
        assert same == state
    state, events = run(state, c.ReleaseGpus(job_id="a", attempt=3, reason="succeeded"))
    assert events == [
        e.GpusReleased(
            at=T0, job_id="a", attempt=3, runner_id="r1", gpu_ids=(0, 1), reason="succeeded"
        )
    ]
    assert state.claims == {}
    assert state.holders == {}
    state, _ = run(state, claim("b", 1, "r1", 0, 1))
    assert state.holder("r1", 0) == Claim("b", 1, "r1", (0, 1))


@pytest.mark.parametrize(
    "bad",
    [
        claim("a", 1, "r1"),
        claim("a", 1, "r1", 0, 0),
        claim("a", 1, "r1", -1),
        claim("a", 0, "r1", 0),
    ],
)
def test_a_malformed_claim_is_refused(bad: c.ClaimGpus) -> None:
    with pytest.raises(DomainError) as info:
        run(LedgerState(), bad)
    assert info.value.code == "invalid_claim"


def test_evolve_tolerates_a_release_of_an_attempt_it_does_not_hold() -> None:
    state, _ = run(LedgerState(), claim("a", 2, "r1", 0))
    after = evolve_ledger(
        state, e.GpusReleased(at=T0, job_id="a", attempt=1, runner_id="r1", gpu_ids=(0,))
    )
    assert after.claims == state.claims
    assert after.version == state.version + 1


def _recorded(position: int, event: e.Event) -> RecordedEvent:
    return RecordedEvent(
        position=position,
        stream_id=GPU_LEDGER_STREAM,
        version=position,
        event_id=f"e{position}",
        type=e.event_type(event),
        schema_version=1,
        payload=e.encode_event(event),
        metadata=EventMetadata(),
        recorded_at=T0,
    )


def test_the_command_handler_registry_routes_ledger_commands() -> None:
    first, second = claim("a", 1, "r1", 0), claim("b", 1, "r1", 0)
    assert aggregates.stream_of(first) == GPU_LEDGER_STREAM
    assert aggregates.stream_of(c.ReleaseGpus(job_id="a", attempt=1)) == GPU_LEDGER_STREAM
    state = aggregates.initial(GPU_LEDGER_STREAM)
    assert isinstance(state, LedgerState)
    events = aggregates.decide_any(state, first, T0)
    recorded = [_recorded(i, x) for i, x in enumerate(events, start=1)]
    folded = aggregates.fold(GPU_LEDGER_STREAM, recorded)
    assert aggregates.version_of(folded) == 1
    with pytest.raises(GpuTaken):
        aggregates.decide_any(folded, second, T0)


# --- the model: drive the ledger at random and compare with plain sets ------------------------

JOBS = ("a", "b", "c", "d")
RUNNERS = ("r1", "r2")
gpu_sets = st.sets(st.integers(0, 3), min_size=1, max_size=3).map(lambda s: tuple(sorted(s)))


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = LedgerState()
        self.history: list[e.LedgerEvent] = []
        #: job -> (attempt, runner, gpus): the model of the live claims.
        self.model: dict[str, tuple[int, str, frozenset[int]]] = {}

    def _busy(self, runner: str, job: str) -> set[int]:
        return {
            gpu
            for other, (_, r, gpus) in self.model.items()
            if other != job and r == runner
            for gpu in gpus
        }

    @rule(
        job=st.sampled_from(JOBS),
        attempt=st.integers(1, 3),
        runner=st.sampled_from(RUNNERS),
        gpus=gpu_sets,
    )
    def claim(self, job: str, attempt: int, runner: str, gpus: tuple[int, ...]) -> None:
        command = c.ClaimGpus(job_id=job, attempt=attempt, runner_id=runner, gpu_ids=gpus)
        held = self.model.get(job)
        try:
            events = decide_ledger(self.state, command, T0)
        except GpuTaken:
            same_attempt = held is not None and held[0] == attempt
            assert same_attempt or self._busy(runner, job) & set(gpus)
            return
        except StaleAssignment:
            assert held is not None and held[0] > attempt
            return
        assert not self._busy(runner, job) & set(gpus)
        if held is not None and held[0] == attempt:
            assert events == []
            assert held[1:] == (runner, frozenset(gpus))
        self._apply(events)
        self.model[job] = (attempt, runner, frozenset(gpus))

    @rule(job=st.sampled_from(JOBS), attempt=st.integers(1, 3))
    def release(self, job: str, attempt: int) -> None:
        events = decide_ledger(self.state, c.ReleaseGpus(job_id=job, attempt=attempt), T0)
        held = self.model.get(job)
        if held is not None and held[0] == attempt:
            assert len(events) == 1
            del self.model[job]
        else:
            assert events == []
        self._apply(events)

    def _apply(self, events: list[e.LedgerEvent]) -> None:
        for event in events:
            self.state = evolve_ledger(self.state, event)
            self.history.append(event)

    @invariant()
    def matches_the_model(self) -> None:
        assert {
            job: (x.attempt, x.runner_id, frozenset(x.gpu_ids))
            for job, x in self.state.claims.items()
        } == self.model

    @invariant()
    def no_gpu_has_two_holders(self) -> None:
        seen: dict[tuple[str, int], str] = {}
        for job, (_, runner, gpus) in self.model.items():
            for gpu in gpus:
                assert (runner, gpu) not in seen
                seen[(runner, gpu)] = job
        assert self.state.holders == seen

    @invariant()
    def replay_rebuilds_the_state(self) -> None:
        assert replay_ledger(self.history) == self.state
        assert self.state.version == len(self.history)


LedgerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestLedgerMachine = LedgerMachine.TestCase
