"""The one contract every read-model backend keeps, and the errors it may raise.

The API, the scheduler and the runners talk to this protocol only; whether the values live
in this process (embedded mode) or in Redis is a wiring choice, and the shared contract
test suite runs against both so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from swift_trainer.core.errors import SwiftTrainerError
from swift_trainer.core.job import JobStatus
from swift_trainer.core.queue_processor import QueueProcessorState
from swift_trainer.core.store import RecordedEvent

from .views import (
    EventLogEntry,
    JobPage,
    JobSummary,
    LogLine,
    MetricPoint,
    QueueView,
    ReadModelSnapshot,
    RunnerSnapshot,
)

#: The largest page any query hands out; bigger requests are refused, not truncated.
MAX_PAGE_SIZE = 1000


class ReadModelError(SwiftTrainerError):
    code = "read_model_error"


class InvalidCursor(ReadModelError):
    """A list cursor this read model did not hand out (or one from another listing)."""

    code = "invalid_cursor"


class ReadModelConflict(ReadModelError):
    """Another projector kept moving the same read model while this one tried to apply.

    Two projectors on one prefix are harmless (each batch is applied once, by whoever gets
    there first), but one that keeps losing the race is misconfigured.
    """

    code = "read_model_conflict"


@runtime_checkable
class ReadModel(Protocol):
    """Projections of the event stream, plus the runner- and scheduler-fed views.

    Event-derived state changes only through ``apply``/``apply_many``, which store the last
    applied global position atomically with the changes: a redelivered event (position at
    or below ``applied_position()``) changes nothing, and a restarted projector resumes
    right after ``applied_position()``.
    """

    async def close(self) -> None: ...

    # --- the projector's side -------------------------------------------------------------

    async def applied_position(self) -> int:
        """Global position of the last applied event (0 when none): where to resume."""

    async def apply(self, event: RecordedEvent) -> bool:
        """Apply one event; False when it was applied before."""

    async def apply_many(self, events: Sequence[RecordedEvent]) -> int:
        """Apply a batch in position order, skipping redeliveries; returns how many were new.

        The whole batch lands at once (one round trip where the backend allows it).
        """

    async def wipe(self, *, keep_feeds: bool = False) -> None:
        """Forget everything, before a rebuild.

        ``keep_feeds`` keeps what replay cannot restore: logs, runner heartbeats, the queue.
        """

    async def snapshot(self) -> ReadModelSnapshot:
        """All event-derived state in canonical form, to compare a rebuild with the live one."""

    # --- jobs -----------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobSummary | None: ...

    async def get_jobs(self, job_ids: Sequence[str]) -> list[JobSummary | None]:
        """Several summaries in one read (None where a job is not listed), in order."""

    async def get_job_json(self, job_id: str) -> bytes | None:
        """The summary as JSON bytes, for readers that pass it straight through."""

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        priority: int | None = None,
        cursor: str | None = None,
        limit: int = 50,
        owner: str | None = None,
    ) -> JobPage:
        """Newest submission first; a cursor page is stable while new jobs arrive.

        ``owner`` lists only that owner's jobs, from the owner's own index.
        """

    async def count_by_status(self) -> dict[JobStatus, int]:
        """Live jobs per status, every status present (deleted jobs are not counted)."""

    async def job_events(
        self,
        job_id: str,
        *,
        after: int = 0,
        limit: int = 100,
    ) -> list[EventLogEntry]:
        """A job's events with position > ``after``, oldest first."""

    async def metric_history(self, job_id: str) -> list[MetricPoint]:
        """The job's loss curve, oldest point first (the newest ``Limits.metric_points``)."""

    # --- runner- and scheduler-fed views --------------------------------------------------

    async def append_logs(self, job_id: str, lines: Sequence[LogLine]) -> int:
        """Store lines newer than the newest stored one; returns how many were new."""

    async def logs(
        self,
        job_id: str,
        *,
        after: int | None = None,
        limit: int = 50,
    ) -> list[LogLine]:
        """Lines with seq > ``after``, oldest first; with no ``after``, the last ``limit``."""

    async def put_runner_snapshot(self, runner_id: str, data: bytes, seen_at: datetime) -> bool:
        """Store a heartbeat unless a newer one is stored; False when it was older."""

    async def remove_runner(self, runner_id: str) -> None: ...

    async def runner_snapshots(self) -> list[RunnerSnapshot]:
        """Every runner's latest heartbeat, by runner id."""

    async def set_queue_view(self, view: QueueView) -> None: ...

    async def queue_view(self) -> QueueView: ...

    async def processor_state(self) -> QueueProcessorState: ...


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
