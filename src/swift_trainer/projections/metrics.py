"""Prometheus instruments of the scheduler: passes, leadership, queue length and wait, losses.

Only the leading scheduler counts what happens to jobs (queue wait, lost, requeued): every
instance follows the same events, and counting them in each would double the totals a
dashboard sums. The instruments are defined here, apart from the scheduler's logic.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from prometheus_client import Counter, Gauge, Histogram

from ..core.store import RecordedEvent
from .scheduler_service import PassResult, SchedulerService

PLACEMENT_SECONDS: Final = Histogram(
    "swift_trainer_placement_pass_duration_seconds",
    "Time one leading scheduler pass took (lost-runner check, placement, queue view).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
LEADER: Final = Gauge(
    "swift_trainer_scheduler_leader",
    "1 while this scheduler holds the leader lease, else 0.",
)
QUEUE_LENGTH: Final = Gauge(
    "swift_trainer_queue_length",
    "Jobs waiting for GPUs, as the leading scheduler last counted them.",
)
QUEUE_WAIT_SECONDS: Final = Histogram(
    "swift_trainer_queue_wait_seconds",
    "Time from a job entering the queue (submitted, released, resumed or requeued) to its "
    "training process starting.",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
JOBS_LOST: Final = Counter(
    "swift_trainer_jobs_lost",
    "Jobs marked lost because their runner stopped heartbeating.",
)
JOBS_REQUEUED: Final = Counter(
    "swift_trainer_jobs_requeued",
    "Jobs put back in the queue after a loss or a refused start.",
)

#: Jobs remembered as queued at most (a bound, not a limit anyone should reach).
_MAX_TRACKED: Final = 200_000


class MeteredSchedulerService(SchedulerService):
    """The scheduler service, with its passes timed and the job flow counted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: When each job now waiting entered the queue (by stream id).
        self._queued_at: dict[str, datetime] = {}

    def _counting(self) -> bool:
        # Only the leader, and only for live events, not the history replayed at start.
        return self.is_leader and self.feed is not None and self.feed.caught_up.is_set()

    async def _on_events(self, batch: Sequence[RecordedEvent]) -> None:
        queued_at = self._queued_at
        counting = self._counting()
        for event in batch:
            if event.type in ("JobQueued", "JobRequeued"):
                if len(queued_at) < _MAX_TRACKED:
                    queued_at[event.stream_id] = event.recorded_at
                if counting and event.type == "JobRequeued":
                    JOBS_REQUEUED.inc()
            elif event.type == "JobStarted":
                since = queued_at.pop(event.stream_id, None)
                if counting and since is not None:
                    wait = (event.recorded_at - since).total_seconds()
                    QUEUE_WAIT_SECONDS.observe(max(wait, 0.0))
            elif event.type == "JobLost":
                if counting:
                    JOBS_LOST.inc()
            elif event.type == "JobDeleted":
                queued_at.pop(event.stream_id, None)
        await super()._on_events(batch)

    async def run_pass(self, *, force_view: bool = False) -> PassResult:
        started = time.perf_counter()
        result = await super().run_pass(force_view=force_view)
        LEADER.set(1 if self.is_leader else 0)
        if result.processed:
            PLACEMENT_SECONDS.observe(time.perf_counter() - started)
            QUEUE_LENGTH.set(result.queued)
        return result
