"""Shared pieces of the runner tests: a recording reporter and process-tree probes."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from swift_trainer.core.progress import MetricSample
from swift_trainer.core.spec import JobSpec, TrainArgs
from swift_trainer.runner.outcome import ExportOutcome, JobOutcome
from swift_trainer.runner.run_watch import Stream
from swift_trainer.runner.training_log import TrainingProgress

#: The simulator, started the way the runner's --simulate-gpus mode starts it.
SWIFT_SIM: tuple[str, ...] = (sys.executable, "-m", "swift_trainer.runner.simulator")


@dataclass
class RecordingReporter:
    """Implements both JobReporter and ExportReporter and remembers every call."""

    started: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)
    progress: list[TrainingProgress] = field(default_factory=list)
    checkpoints: list[tuple[int, str]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    lines: list[tuple[Stream, str]] = field(default_factory=list)
    outcomes: list[JobOutcome | ExportOutcome] = field(default_factory=list)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_started(self, pid: int, argv: tuple[str, ...]) -> None:
        self.started.append((pid, argv))

    async def on_progress(
        self, progress: TrainingProgress, earlier: tuple[MetricSample, ...] = ()
    ) -> None:
        self.progress.append(progress)

    async def on_checkpoint(self, step: int, path: str) -> None:
        self.checkpoints.append((step, path))

    async def on_checkpoints_removed(self, paths: tuple[str, ...]) -> None:
        self.removed.extend(paths)

    async def on_log_line(self, stream: Stream, line: str) -> None:
        self.lines.append((stream, line))

    async def on_finished(self, outcome: JobOutcome | ExportOutcome) -> None:
        self.outcomes.append(outcome)
        self.finished.set()

    def stream(self, name: Stream) -> list[str]:
        return [line for stream, line in self.lines if stream == name]


def session_processes(sid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of a session: what must be empty after a stop."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return found


def tree_pids(pid: int) -> set[int]:
    try:
        root = psutil.Process(pid)
        return {pid, *(c.pid for c in root.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def make_spec(output_dir: str = "jobs/job-1", **train: object) -> JobSpec:
    return JobSpec(
        data_path="AI-ModelScope/coco#40",
        model_path="Qwen/Qwen2.5-VL-7B-Instruct",
        output_dir=output_dir,
        train_args=TrainArgs(**train),  # type: ignore[arg-type]
    )
