"""The log invariants catch what they are for: each check against a planted violation."""

from __future__ import annotations

from datetime import UTC, datetime

from swift_trainer.core import events as e
from swift_trainer.core.ids import job_stream
from swift_trainer.core.invariants import gpu_double_bookings, repeated_appends
from swift_trainer.core.spec import JobSpec
from swift_trainer.core.store import EventMetadata, RecordedEvent

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Log:
    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []
        self.versions: dict[str, int] = {}

    def add(self, event: e.JobEvent, command_id: str | None = None) -> None:
        stream = job_stream(event.job_id)
        version = self.versions.get(stream, 0) + 1
        self.versions[stream] = version
        self.events.append(
            RecordedEvent(
                position=len(self.events) + 1,
                stream_id=stream,
                version=version,
                event_id=f"ev-{len(self.events) + 1}",
                type=e.event_type(event),
                schema_version=1,
                payload=e.encode_event(event),
                metadata=EventMetadata(command_id=command_id),
                recorded_at=T0,
            )
        )


def _placed(log: Log, job_id: str, runner: str, *gpus: int) -> None:
    spec = JobSpec(data_path="d", model_path="m", output_dir=f"o/{job_id}", gpu_count=len(gpus))
    log.add(e.JobSubmitted(at=T0, job_id=job_id, spec=spec), f"submit-{job_id}")
    log.add(e.JobQueued(at=T0, job_id=job_id, priority=5), f"submit-{job_id}")
    log.add(
        e.JobScheduled(at=T0, job_id=job_id, attempt=1, runner_id=runner, gpu_ids=gpus),
        f"place-{job_id}",
    )


def test_disjoint_placements_pass_and_an_overlap_is_reported() -> None:
    log = Log()
    _placed(log, "a", "r1", 0, 1)
    _placed(log, "b", "r1", 2)
    _placed(log, "c", "r2", 0)
    assert gpu_double_bookings(log.events) == ([], 3)
    _placed(log, "d", "r1", 1)
    violations, scheduled = gpu_double_bookings(log.events)
    assert scheduled == 4
    assert [(v.rule, v.position) for v in violations] == [("gpu_double_booked", 12)]
    assert "GPU 1 of r1 held by a and d" in violations[0].message


def test_a_gpu_freed_by_an_ended_attempt_may_be_placed_again() -> None:
    log = Log()
    _placed(log, "a", "r1", 0)
    log.add(e.JobLost(at=T0, job_id="a", attempt=1, runner_id="r1", reason="gone"))
    log.add(e.JobRequeued(at=T0, job_id="a", priority=5, retries=1, reason="lost"))
    _placed(log, "b", "r1", 0)
    assert gpu_double_bookings(log.events) == ([], 2)


def test_one_append_per_command_passes_and_a_decided_again_command_is_reported() -> None:
    log = Log()
    _placed(log, "a", "r1", 0)
    assert repeated_appends(log.events) == []
    # A redelivered placement decided a second time: JobScheduled stored twice for one id.
    log.add(e.JobScheduled(at=T0, job_id="a", attempt=1, runner_id="r1", gpu_ids=(0,)), "place-a")
    [violation] = repeated_appends(log.events)
    assert violation.rule == "command_appended_twice"
    assert "place-a" in violation.message


def test_a_reused_event_id_is_reported() -> None:
    log = Log()
    _placed(log, "a", "r1", 0)
    copy = log.events[0]
    log.events.append(
        RecordedEvent(
            position=99,
            stream_id="job-other",
            version=1,
            event_id=copy.event_id,
            type=copy.type,
            schema_version=1,
            payload=copy.payload,
            metadata=EventMetadata(),
            recorded_at=T0,
        )
    )
    assert [(v.rule, v.position) for v in repeated_appends(log.events)] == [("event_repeated", 99)]


def test_one_command_may_store_two_events_of_a_type_but_not_one_fact_twice() -> None:
    log = Log()
    _placed(log, "a", "r1", 0)
    for path in ("o/a/checkpoint-2", "o/a/checkpoint-4"):
        log.add(e.CheckpointRemoved(at=T0, job_id="a", path=path, reason="rotated"), "removed")
    assert repeated_appends(log.events) == []
    # The same fact decided again a moment later: a redelivered command stored twice.
    later = T0.replace(second=5)
    log.add(e.JobPaused(at=T0, job_id="a", reason="x", attempt=1), "pause")
    log.add(e.JobPaused(at=later, job_id="a", reason="x", attempt=1), "pause")
    assert [v.rule for v in repeated_appends(log.events)] == ["command_appended_twice"]
