"""What the supervisor tells about a run: the callbacks the NATS shell implements.

The supervisor knows nothing about the bus; ``reporting.JobReports`` / ``ExportReports``
map these callbacks to ``Report*`` commands.
"""

from __future__ import annotations

from typing import Literal, Protocol

from ..core.progress import MetricSample
from .outcome import ExportOutcome, JobOutcome
from .training_log import TrainingProgress

Stream = Literal["stdout", "stderr"]


class JobReporter(Protocol):
    """Callbacks of one training run; the NATS shell maps them to ``Report*`` commands."""

    async def on_started(self, pid: int, argv: tuple[str, ...]) -> None: ...

    async def on_progress(
        self, progress: TrainingProgress, earlier: tuple[MetricSample, ...] = ()
    ) -> None: ...

    async def on_checkpoint(self, step: int, path: str) -> None: ...

    async def on_log_line(self, stream: Stream, line: str) -> None: ...

    async def on_finished(self, outcome: JobOutcome) -> None: ...


class ExportReporter(Protocol):
    async def on_started(self, pid: int, argv: tuple[str, ...]) -> None: ...

    async def on_log_line(self, stream: Stream, line: str) -> None: ...

    async def on_finished(self, outcome: ExportOutcome) -> None: ...
