"""The fleet aggregate: drains and GPU health as events, each recorded once."""

from __future__ import annotations

from datetime import UTC, datetime

from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.fleet import FleetState, decide_fleet, evolve_fleet

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def run(state: FleetState, command: c.FleetCommand) -> tuple[FleetState, list[e.FleetEvent]]:
    events = decide_fleet(state, command, NOW)
    for event in events:
        state = evolve_fleet(state, event)
    return state, events


def test_a_drain_is_recorded_with_its_reason_once() -> None:
    state, events = run(FleetState(), c.DrainRunner(runner_id="r1", reason="DIMM swap"))
    assert events == [e.RunnerDrained(at=NOW, runner_id="r1", reason="DIMM swap")]
    assert state.drained["r1"].reason == "DIMM swap"
    assert run(state, c.DrainRunner(runner_id="r1", reason="again"))[1] == []
    # Asking for --now on a plain drain is a change: its jobs must go.
    state, events = run(state, c.DrainRunner(runner_id="r1", reason="now", stop_jobs=True))
    assert state.drained["r1"].stop_jobs
    state, events = run(state, c.UndrainRunner(runner_id="r1", reason="fixed"))
    assert events == [e.RunnerUndrained(at=NOW, runner_id="r1", reason="fixed")]
    assert state.drained == {}
    assert run(state, c.UndrainRunner(runner_id="r1"))[1] == []


def test_a_gpu_health_change_is_an_event_each_way() -> None:
    healthy = c.RecordGpuHealth(runner_id="r1", gpu_uuid="GPU-1", gpu_index=1)
    assert run(FleetState(), healthy)[1] == []  # never sick: nothing to record
    sick = c.RecordGpuHealth(runner_id="r1", gpu_uuid="GPU-1", gpu_index=1, reasons=("Xid 79",))
    state, events = run(FleetState(), sick)
    assert events == [
        e.GpuHealthChanged(
            at=NOW,
            runner_id="r1",
            gpu_uuid="GPU-1",
            gpu_index=1,
            healthy=False,
            reasons=("Xid 79",),
        )
    ]
    assert list(state.unhealthy()) == ["GPU-1"]
    assert run(state, sick)[1] == []
    state, events = run(state, healthy)
    assert [x.healthy for x in events] == [True]  # type: ignore[union-attr]
    assert state.unhealthy() == {}
