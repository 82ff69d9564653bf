"""The scheduler's observer as deployed: its metrics and the placement span of a job."""

from __future__ import annotations

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from tests.projections.conftest import Bus, eventually, heartbeat

from swift_trainer.core import commands as c
from swift_trainer.core.telemetry import setup_tracing
from swift_trainer.projections.scheduler.telemetry import SchedulerTelemetry


def _value(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_a_leading_scheduler_counts_passes_waits_and_traces_each_placement(
    bus: Bus,
) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("test", processor=SimpleSpanProcessor(exporter))
    passes = _value("swift_trainer_placement_pass_duration_seconds_count")
    decided = _value("swift_trainer_placement_decision_seconds_count")
    waits = _value("swift_trainer_queue_wait_seconds_count")
    await bus.put_heartbeat(heartbeat("r1", gpus=1))
    scheduler = await bus.scheduler(observer=SchedulerTelemetry())
    await eventually(lambda: scheduler.leading, what="leadership")
    await bus.submit("a")

    async def placed() -> bool:
        return (await bus.status("a")) == "scheduled"

    await eventually(placed, what="job a scheduled")
    runner = {"job_id": "a", "attempt": 1, "runner_id": "r1"}
    assert (await bus.send(c.ReportStarted(**runner, pid=1, command=("swift",)))).ok
    await eventually(
        lambda: _value("swift_trainer_queue_wait_seconds_count") == waits + 1,
        what="the queue wait observed",
    )
    assert _value("swift_trainer_scheduler_leader") == 1
    assert _value("swift_trainer_placement_pass_duration_seconds_count") > passes
    assert _value("swift_trainer_placement_decision_seconds_count") > decided
    spans = [s for s in exporter.get_finished_spans() if s.name == "scheduler place job"]
    assert [s.attributes["job.id"] for s in spans if s.attributes] == ["a"]
