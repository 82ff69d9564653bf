"""The watch loop of one run: tail its output, report progress and checkpoints, and carry
out a stop (SIGTERM to the trainers, a grace period, then SIGKILL to everything left).

A stop signals the trainers only at first: the launcher dies on SIGTERM without passing
it on, torchrun SIGKILLs its ranks 30 s after its own SIGTERM, and a DataLoader worker
killed by a signal crashes its rank before the graceful-exit checkpoint is written. After
the grace period every process still alive in the tree, session or group gets SIGKILL.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from ..core.progress import MetricSample
from .failure_classifier import GpuFault
from .log_tail import LineTail, seed_tail
from .outcome import (
    ExportFacts,
    ExportOutcome,
    JobFacts,
    JobOutcome,
    clip_stderr_tail,
    decide_export,
    decide_job,
)
from .process_tree import ProcessTree
from .run_state import RunRecord
from .training_log import (
    LOGGING_FILE,
    CheckpointWatcher,
    ProgressThrottle,
    TrainingLogReader,
    TrainingProgress,
    latest_checkpoint,
    merge_progress,
)

Stream = Literal["stdout", "stderr"]


class JobReporter(Protocol):
    """Callbacks of one training run; the NATS shell maps them to ``Report*`` commands."""

    async def on_started(self, pid: int, argv: tuple[str, ...]) -> None: ...

    async def on_progress(
        self, progress: TrainingProgress, earlier: tuple[MetricSample, ...] = ()
    ) -> None: ...

    async def on_checkpoint(self, step: int, path: str) -> None: ...

    async def on_checkpoints_removed(self, paths: tuple[str, ...]) -> None: ...

    async def on_log_line(self, stream: Stream, line: str) -> None: ...

    async def on_finished(self, outcome: JobOutcome) -> None: ...


class ExportReporter(Protocol):
    """Callbacks of one ``swift export`` run."""

    async def on_started(self, pid: int, argv: tuple[str, ...]) -> None: ...

    async def on_log_line(self, stream: Stream, line: str) -> None: ...

    async def on_finished(self, outcome: ExportOutcome) -> None: ...


_log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class WatchTiming:
    """The supervisor's clocks; ``Supervisor`` documents each."""

    grace_period_s: float
    orphan_grace_s: float
    poll_interval_s: float
    tree_refresh_s: float
    state_flush_s: float


async def report_safely(awaitable: Awaitable[None], record: RunRecord) -> None:
    """A failing reporter (bus down) must not take the supervision of a job with it."""
    try:
        await awaitable
    except Exception:
        _log.exception("reporter failed for %s", record.key)


class WatchedRun:
    """One supervised run: its record, process tree, output tails and reporters."""

    def __init__(
        self,
        record: RunRecord,
        tree: ProcessTree,
        process: asyncio.subprocess.Process | None,
        *,
        tail_lines: int,
        progress_interval_s: float,
        job_reporter: JobReporter | None = None,
        export_reporter: ExportReporter | None = None,
    ) -> None:
        self.record = record
        self.job_reporter = job_reporter
        self.export_reporter = export_reporter
        self.tree = tree
        self.process = process
        self.stdout = LineTail(record.stdout_path, record.stdout_offset)
        self.stderr = LineTail(record.stderr_path, record.stderr_offset)
        self.stderr_tail: deque[str] = deque(
            seed_tail(record.stderr_path, record.stderr_offset, tail_lines),
            maxlen=tail_lines,
        )
        self.log = TrainingLogReader(
            Path(record.output_dir) / LOGGING_FILE,
            start_offset=record.log_start_offset,
        )
        self.checkpoints = CheckpointWatcher(record.output_dir, known=record.reported_checkpoints)
        self.throttle = ProgressThrottle(progress_interval_s)
        self.progress: TrainingProgress | None = None
        self.stop_event = asyncio.Event()
        if record.stop_requested:
            self.stop_event.set()
        self.done: asyncio.Future[JobOutcome | ExportOutcome] = (
            asyncio.get_running_loop().create_future()
        )
        self.task: asyncio.Task[None] | None = None
        self.wait_task: asyncio.Task[int] | None = None
        self.unkillable: list[int] = []
        self.grace_period_s: float | None = None

    @property
    def reporter(self) -> JobReporter | ExportReporter:
        reporter = self.job_reporter or self.export_reporter
        assert reporter is not None
        return reporter

    def exit_code(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    def leader_exited(self) -> bool:
        if self.process is not None:
            return self.process.returncode is not None
        return not self.tree.leader_alive()

    def stderr_text(self) -> str:
        return clip_stderr_tail(tuple(self.stderr_tail))

    def decide(self, *, gpu_faults: tuple[GpuFault, ...] = ()) -> JobOutcome | ExportOutcome:
        """Gather the facts (exit code, log, newest checkpoint, artifact) and judge them."""
        record = self.record
        if record.kind == "export":
            artifact = record.artifact_path
            return decide_export(
                ExportFacts(
                    exit_code=self.exit_code(),
                    stop_requested=record.stop_requested,
                    artifact_path=artifact,
                    artifact_written=artifact is not None
                    and (Path(artifact) / "config.json").is_file(),
                    stderr_tail=self.stderr_text(),
                )
            )
        checkpoint = latest_checkpoint(record.output_dir)
        return decide_job(
            JobFacts(
                exit_code=self.exit_code(),
                stop_requested=record.stop_requested,
                last_step=self.log.last_step,
                max_steps=self.log.max_steps,
                summary=self.log.summary,
                log_reached_final_step=self.log.reached_final_step,
                malformed_log_lines=self.log.malformed_lines,
                checkpoint=checkpoint.path if checkpoint else None,
                output_dir=record.output_dir,
                stderr_tail=self.stderr_text(),
                unkillable=tuple(self.unkillable),
                gpu_faults=gpu_faults,
            )
        )

    async def sleep(self, timeout: float) -> None:
        """Until the poll interval passes, a stop is asked for or the leader exits."""
        waiters: set[asyncio.Future[object]] = set()
        stop = asyncio.ensure_future(self.stop_event.wait())
        waiters.add(stop)  # type: ignore[arg-type]
        if self.wait_task is not None and not self.wait_task.done():
            waiters.add(self.wait_task)  # type: ignore[arg-type]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            stop.cancel()

    async def drain(self, *, final: bool, persist: Callable[[], None]) -> None:
        """Report new output lines, progress and checkpoints; ``final`` reads to the end.

        Files are read a bounded chunk at a time, yielding to the event loop in between.
        """
        await self._drain_output(final=final)
        job_reporter = self.job_reporter
        if job_reporter is None:
            return
        await self._drain_progress(job_reporter, final=final)
        new = self.checkpoints.scan()
        for checkpoint in new:
            await report_safely(
                job_reporter.on_checkpoint(checkpoint.step, checkpoint.path), self.record
            )
        removed = tuple(self.checkpoints.removed())
        if removed:
            await report_safely(job_reporter.on_checkpoints_removed(removed), self.record)
        if new or removed:
            self.record.reported_checkpoints = tuple(sorted(self.checkpoints.known))
            persist()

    async def _drain_output(self, *, final: bool) -> None:
        tails: tuple[tuple[Stream, LineTail], ...] = (
            ("stdout", self.stdout),
            ("stderr", self.stderr),
        )
        for stream, tail in tails:
            while True:
                lines = tail.finish() if final else tail.poll()
                for line in lines:
                    if stream == "stderr":
                        self.stderr_tail.append(line)
                    await report_safely(self.reporter.on_log_line(stream, line), self.record)
                if final or tail.at_end:
                    break
                await asyncio.sleep(0)
        self.record.stdout_offset = self.stdout.offset
        self.record.stderr_offset = self.stderr.offset

    async def _drain_progress(self, job_reporter: JobReporter, *, final: bool) -> None:
        while True:
            records = self.log.finish() if final else self.log.poll()
            for record in records:
                if isinstance(record, TrainingProgress):
                    self.progress = merge_progress(self.progress, record)
                    ready = self.throttle.offer(self.progress)
                    if ready is not None:
                        earlier = self.throttle.take_earlier()
                        await report_safely(job_reporter.on_progress(ready, earlier), self.record)
            if final or self.log.at_end:
                break
            await asyncio.sleep(0)
        due = self.throttle.flush() if final else self.throttle.due()
        if due is not None:
            earlier = self.throttle.take_earlier()
            await report_safely(job_reporter.on_progress(due, earlier), self.record)


async def monitor(run: WatchedRun, timing: WatchTiming, persist: Callable[[], None]) -> None:
    """Watch until every process of the run is gone (or survived SIGKILL for 10 s)."""
    loop = asyncio.get_running_loop()
    term_sent = False
    exited = False
    deadline: float | None = None
    killed_at: float | None = None
    next_refresh = 0.0
    next_flush = loop.time() + timing.state_flush_s
    while True:
        await run.drain(final=False, persist=persist)
        now = loop.time()
        if now >= next_refresh:
            run.tree.refresh()
            next_refresh = now + timing.tree_refresh_s
        if now >= next_flush:
            persist()
            next_flush = now + timing.state_flush_s
        if run.stop_event.is_set() and not term_sent:
            term_sent = True
            signalled = run.tree.signal(signal.SIGTERM, trainers_only=True)
            _log.info("stop %s: SIGTERM to trainers %s", run.record.key, signalled)
            grace = run.grace_period_s
            deadline = now + (timing.grace_period_s if grace is None else grace)
        if not exited and run.leader_exited():
            exited = True
            if deadline is None:
                deadline = now + timing.orphan_grace_s
        if exited:
            remaining = run.tree.alive()
            if not remaining:
                return
            if killed_at is not None and now - killed_at > 10.0:
                run.unkillable = [p.pid for p in remaining]
                _log.error("%s: processes survive SIGKILL: %s", run.record.key, run.unkillable)
                return
        if deadline is not None and now >= deadline and killed_at is None:
            signalled = run.tree.signal(signal.SIGKILL)
            _log.warning("%s: SIGKILL to %s after the grace period", run.record.key, signalled)
            killed_at = now
        await run.sleep(timing.poll_interval_s)
