"""Histories for read-model tests, made by the real domain rather than typed by hand.

``History`` runs commands through ``core.job.decide`` and records the events it returns
with increasing global positions, so every history a test applies is one the system could
have stored. ``random_history`` does the same with random commands (refused ones are
skipped), and ``ListEventStore`` serves a history to ``rebuild`` like an event store would.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.errors import DomainError
from swift_trainer.core.ids import QUEUE_PROCESSOR_STREAM, job_stream
from swift_trainer.core.job import JobState, JobStatus, decide, evolve, initial_state
from swift_trainer.core.queue_processor import (
    QueueProcessorState,
    decide_processor,
    evolve_processor,
)
from swift_trainer.core.spec import JobSpec, TrainArgs
from swift_trainer.core.store import EventMetadata, RecordedEvent

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


class History:
    """A growing, valid event history with a deterministic clock and id sequence."""

    def __init__(self, *, position_gap: int = 1) -> None:
        self.records: list[RecordedEvent] = []
        self.states: dict[str, JobState] = {}
        self.processor = QueueProcessorState()
        self._versions: dict[str, int] = {}
        self._position = 0
        self._gap = position_gap
        self._clock = T0

    # --- plumbing -------------------------------------------------------------------------

    def now(self) -> datetime:
        self._clock += timedelta(seconds=1)
        return self._clock

    def state(self, job_id: str) -> JobState:
        return self.states.get(job_id) or initial_state(job_id)

    def record(
        self,
        stream_id: str,
        event: e.Event,
        *,
        type_name: str | None = None,
        payload: bytes | None = None,
    ) -> RecordedEvent:
        self._position += self._gap
        version = self._versions.get(stream_id, 0) + 1
        self._versions[stream_id] = version
        recorded = RecordedEvent(
            position=self._position,
            stream_id=stream_id,
            version=version,
            event_id=f"evt-{self._position:08d}",
            type=type_name or e.event_type(event),
            schema_version=1,
            payload=e.encode_event(event) if payload is None else payload,
            metadata=EventMetadata(actor="tests"),
            recorded_at=event.at,
        )
        self.records.append(recorded)
        return recorded

    def run(self, command: c.AnyJobCommand) -> list[RecordedEvent]:
        """Decide, evolve and record; a refused command raises DomainError, records nothing."""
        state = self.state(command.job_id)
        events = decide(state, command, self.now())
        out = []
        for event in events:
            state = evolve(state, event)
            out.append(self.record(job_stream(command.job_id), event))
        self.states[command.job_id] = state
        return out

    def run_processor(self, command: c.ProcessorCommand) -> list[RecordedEvent]:
        out = []
        for event in decide_processor(self.processor, command, self.now()):
            self.processor = evolve_processor(self.processor, event)
            out.append(self.record(QUEUE_PROCESSOR_STREAM, event))
        return out

    # --- users ----------------------------------------------------------------------------

    def submit(
        self,
        job_id: str,
        *,
        priority: int = 5,
        gpu_count: int = 1,
        auto_start: bool = True,
        labels: dict[str, str] | None = None,
        train_args: TrainArgs | None = None,
        max_retries: int = 2,
        owner: str | None = None,
    ) -> list[RecordedEvent]:
        spec = JobSpec(
            data_path="AI-ModelScope/coco#20000",
            model_path="Qwen/Qwen2.5-VL-7B-Instruct",
            output_dir=f"output/{job_id}",
            priority=priority,
            gpu_count=gpu_count,
            auto_start=auto_start,
            labels=labels or {},
            train_args=train_args or TrainArgs(),
            max_retries=max_retries,
            owner=owner,
        )
        return self.run(c.SubmitJob(job_id=job_id, spec=spec))

    def start_job(self, job_id: str) -> list[RecordedEvent]:
        return self.run(c.StartJob(job_id=job_id))

    def stop(self, job_id: str, reason: str = "stopped by user") -> list[RecordedEvent]:
        return self.run(c.StopJob(job_id=job_id, reason=reason))

    def reprioritise(self, job_id: str, priority: int) -> list[RecordedEvent]:
        return self.run(c.ChangePriority(job_id=job_id, priority=priority))

    def delete(self, job_id: str) -> list[RecordedEvent]:
        return self.run(c.DeleteJob(job_id=job_id))

    def export(self, job_id: str, checkpoint: str | None = None) -> list[RecordedEvent]:
        return self.run(c.RequestExport(job_id=job_id, checkpoint=checkpoint))

    def pause(self, reason: str = "maintenance") -> list[RecordedEvent]:
        return self.run_processor(c.PauseQueueProcessor(reason=reason))

    def unpause(self) -> list[RecordedEvent]:
        return self.run_processor(c.ResumeQueueProcessor())

    # --- scheduler ------------------------------------------------------------------------

    def schedule(self, job_id: str, *, runner: str = "runner-a") -> list[RecordedEvent]:
        state = self.state(job_id)
        count = state.spec.gpu_count if state.spec else 1
        return self.run(
            c.ScheduleJob(
                job_id=job_id,
                attempt=state.attempt + 1,
                runner_id=runner,
                gpu_ids=tuple(range(count)),
            ),
        )

    def lose(self, job_id: str) -> list[RecordedEvent]:
        return self.run(c.MarkLost(job_id=job_id, attempt=self.state(job_id).attempt))

    # --- runners --------------------------------------------------------------------------

    def _report(self, job_id: str) -> dict[str, Any]:
        state = self.state(job_id)
        return {"job_id": job_id, "attempt": state.attempt, "runner_id": state.runner_id or "-"}

    def started(self, job_id: str, pid: int = 4242) -> list[RecordedEvent]:
        argv = ("swift", "sft", "--model", "Qwen/Qwen2.5-VL-7B-Instruct")
        return self.run(c.ReportStarted(**self._report(job_id), pid=pid, command=argv))

    def reject(self, job_id: str, reason: str = "GPU busy") -> list[RecordedEvent]:
        return self.run(c.RejectAssignment(**self._report(job_id), reason=reason))

    def progress(
        self,
        job_id: str,
        step: int,
        *,
        max_steps: int | None = 100,
        loss: float | None = None,
        learning_rate: float | None = None,
        **extra: Any,
    ) -> list[RecordedEvent]:
        return self.run(
            c.ReportProgress(
                **self._report(job_id),
                step=step,
                max_steps=max_steps,
                loss=loss,
                learning_rate=learning_rate,
                **extra,
            ),
        )

    def checkpoint(self, job_id: str, step: int) -> list[RecordedEvent]:
        path = f"output/{job_id}/v0/checkpoint-{step}"
        return self.run(c.ReportCheckpoint(**self._report(job_id), step=step, path=path))

    def succeed(self, job_id: str) -> list[RecordedEvent]:
        return self.run(c.ReportSucceeded(**self._report(job_id), output_path=f"output/{job_id}"))

    def fail(
        self,
        job_id: str,
        *,
        exit_code: int | None = 1,
        reason: str = "swift exited with 1",
        stderr_tail: str = "",
    ) -> list[RecordedEvent]:
        return self.run(
            c.ReportFailed(
                **self._report(job_id),
                exit_code=exit_code,
                reason=reason,
                stderr_tail=stderr_tail,
            ),
        )

    def stopped(self, job_id: str) -> list[RecordedEvent]:
        return self.run(c.ReportStopped(**self._report(job_id)))

    def _export_report(self, job_id: str) -> dict[str, Any]:
        state = self.state(job_id)
        export = state.exports[-1] if state.exports else None
        return {
            "job_id": job_id,
            "export_id": export.export_id if export else "-",
            "runner_id": export.runner_id if export else "-",
        }

    def export_started(self, job_id: str) -> list[RecordedEvent]:
        return self.run(c.ReportExportStarted(**self._export_report(job_id), pid=777))

    def export_succeeded(self, job_id: str) -> list[RecordedEvent]:
        report = self._export_report(job_id)
        artifact = f"output/{job_id}/{report['export_id']}-merged"
        return self.run(c.ReportExportSucceeded(**report, artifact_path=artifact))

    def export_failed(self, job_id: str) -> list[RecordedEvent]:
        return self.run(
            c.ReportExportFailed(**self._export_report(job_id), exit_code=2, reason="x")
        )

    # --- shortcuts ------------------------------------------------------------------------

    def running(self, job_id: str, **submit: Any) -> list[RecordedEvent]:
        """Submit, place and start a job: the common first act of a test."""
        return [*self.submit(job_id, **submit), *self.schedule(job_id), *self.started(job_id)]


class ListEventStore:
    """The slice of an event store that replay reads, over a list."""

    def __init__(self, records: Sequence[RecordedEvent]) -> None:
        self.records = list(records)

    async def read_all(self, *, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        return [r for r in self.records if r.position > after_position][:limit]


def _random_progress(h: History, job_id: str, rng: random.Random) -> object:
    progress = h.state(job_id).progress
    step = (progress.step if progress else 0) + rng.randint(1, 25)
    loss = round(rng.uniform(0.1, 3.0), 4) if rng.random() < 0.9 else None
    return h.progress(job_id, step, max_steps=400, loss=loss, learning_rate=1e-4)


def _random_checkpoint(h: History, job_id: str, rng: random.Random) -> object:
    progress = h.state(job_id).progress
    return h.checkpoint(job_id, (progress.step if progress else 0) + rng.randint(0, 3))


Action = Callable[[History, str, random.Random], object]


def _submit(h: History, job_id: str, rng: random.Random) -> object:
    return h.submit(
        job_id,
        priority=rng.randint(0, 10),
        auto_start=rng.random() < 0.8,
        gpu_count=rng.choice([1, 1, 2]),
        labels={"team": rng.choice(["vision", "nlp"])},
        owner=rng.choice([None, "alice", "a:b"]),
    )


def _fail(h: History, job_id: str, rng: random.Random) -> object:
    return h.fail(job_id, exit_code=rng.choice([1, 137, None]), stderr_tail="CUDA error\n" * 200)


_start: Action = lambda h, j, r: h.start_job(j)  # noqa: E731
_schedule: Action = lambda h, j, r: h.schedule(j, runner=r.choice(["runner-a", "runner-b"]))  # noqa: E731
_started: Action = lambda h, j, r: h.started(j, pid=r.randint(100, 999))  # noqa: E731
_stop: Action = lambda h, j, r: h.stop(j)  # noqa: E731
_delete: Action = lambda h, j, r: h.delete(j)  # noqa: E731
_priority: Action = lambda h, j, r: h.reprioritise(j, r.randint(0, 10))  # noqa: E731
_export: Action = lambda h, j, r: h.export(j)  # noqa: E731
_export_started: Action = lambda h, j, r: h.export_started(j)  # noqa: E731
_export_succeeded: Action = lambda h, j, r: h.export_succeeded(j)  # noqa: E731
_export_failed: Action = lambda h, j, r: h.export_failed(j)  # noqa: E731
_lose: Action = lambda h, j, r: h.lose(j)  # noqa: E731

#: What a job in each status plausibly sees next (repeats weigh the choice).
_NEXT: dict[JobStatus, list[Action]] = {
    JobStatus.NEW: [_submit],
    JobStatus.DELETED: [_submit],
    JobStatus.HELD: [_start, _start, _priority, _stop, _delete],
    JobStatus.QUEUED: [_schedule, _schedule, _schedule, _priority, _stop],
    JobStatus.SCHEDULED: [_started, _started, _started, lambda h, j, r: h.reject(j), _lose, _stop],
    JobStatus.RUNNING: [
        *[_random_progress] * 6,
        _random_checkpoint,
        _random_checkpoint,
        lambda h, j, r: h.succeed(j),
        _fail,
        _stop,
        _lose,
    ],
    JobStatus.STOPPING: [lambda h, j, r: h.stopped(j), _random_progress, _random_checkpoint, _lose],
    JobStatus.SUCCEEDED: [_export, _export_started, _export_succeeded, _export_failed, _delete],
    JobStatus.FAILED: [_start, _export, _export_started, _delete],
    JobStatus.STOPPED: [_start, _export, _export_started, _export_succeeded, _delete],
}
_ANY: list[Action] = [action for actions in _NEXT.values() for action in actions]


def random_history(seed: int, *, jobs: int = 5, steps: int = 150, gap: int = 1) -> History:
    """A valid history from random commands; refused ones are skipped, as a handler would."""
    rng = random.Random(seed)
    history = History(position_gap=gap)
    job_ids = [f"job-{n}" for n in range(jobs)]
    for _ in range(steps):
        if rng.random() < 0.03:
            history.pause() if not history.processor.paused else history.unpause()
            continue
        job_id = rng.choice(job_ids)
        # Mostly a plausible next step; now and then anything, which the domain may refuse.
        choices = _ANY if rng.random() < 0.1 else _NEXT[history.state(job_id).status]
        with contextlib.suppress(DomainError):
            rng.choice(choices)(history, job_id, rng)
    return history


def fleet_history(seed: int, *, jobs: int = 40) -> History:
    """A busy fleet's log, as ``bench_scale`` writes it but interleaved across jobs: most
    jobs run, report more progress than the small caps hold, checkpoint and finish or fail;
    some are deleted (and their ids submitted again), reprioritised, lost and requeued,
    and the last few stay queued."""
    rng = random.Random(seed)
    history = History()
    live: dict[str, list[Action]] = {}
    for n in range(jobs):
        job_id = f"fleet-{n:03d}"
        history.submit(job_id, priority=rng.randint(0, 9))
        if n < jobs - 4:
            live[job_id] = _fleet_plan(job_id, rng)
    while live:  # one step of a random live job at a time: the jobs' events interleave
        job_id = rng.choice(sorted(live))
        rng_step = live[job_id].pop(0)
        rng_step(history, job_id, rng)
        if not live[job_id]:
            del live[job_id]
    return history


def _fleet_plan(job_id: str, rng: random.Random) -> list[Action]:
    steps: list[Action] = [_schedule, _started]
    if rng.random() < 0.1:
        steps += [_lose, _schedule, _started]
    if rng.random() < 0.1:
        steps.insert(0, lambda h, j, r: h.reprioritise(j, r.randint(0, 9)))
    for step in range(10, 10 * rng.randint(3, 12), 10):
        steps.append(lambda h, j, r, step=step: h.progress(j, step, max_steps=200, loss=5.0 / step))
        if step % 40 == 0:
            steps.append(lambda h, j, r, step=step: h.checkpoint(j, step))
    steps.append(_fail if rng.random() < 0.2 else lambda h, j, r: h.succeed(j))
    if rng.random() < 0.15:
        steps += [_delete, lambda h, j, r: h.submit(j, priority=r.randint(0, 9))]
    return steps
