"""The scheduler service as deployed: its passes measured and each placement traced per job.

Tracing: a job's placement (``ClaimGpus`` + ``ScheduleJob``) runs in a span whose parent is
the trace of the request that queued the job (from that event's metadata), linked to the
scheduler pass that decided it. So ``ScheduleJob``, the ``JobScheduled`` event and the
runner's start stay in the job's own trace, and one trace follows a job from
``POST /jobs`` to its first progress report.

Metrics: only the leading scheduler counts what happens to jobs (queue wait, lost,
requeued): every instance follows the same events, and counting in each would double the
totals a dashboard sums. History replayed at start is not counted either.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from opentelemetry import trace

from ...bus.trace_headers import extract_context
from ...core.ids import job_stream
from ...core.store import RecordedEvent
from . import scheduler_metrics as metrics
from .pass_result import PassResult
from .placement import Decision
from .scheduler_service import SchedulerService

_tracer = trace.get_tracer(__name__)

#: Jobs remembered at most (queued-at times, trace carriers): a bound nobody should reach.
_MAX_TRACKED: Final = 200_000
#: After these a job needs no placement until it is queued again.
_DONE: Final = frozenset({"JobSucceeded", "JobFailed", "JobStopped", "JobDeleted"})
#: Events counted as they come, by type.
_COUNTERS: Final = {
    "JobLost": metrics.JOBS_LOST,
    "JobPreempted": metrics.JOBS_PREEMPTED,
    "JobTimedOut": metrics.JOBS_TIMED_OUT,
}


class ObservedSchedulerService(SchedulerService):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: When each waiting job entered the queue (by stream id), for the queue wait.
        self._queued_at: dict[str, datetime] = {}
        #: The trace context of the request that last queued each job (by stream id).
        self._job_traces: dict[str, dict[str, str]] = {}

    def _counting(self) -> bool:
        return self.is_leader and self.feed is not None and self.feed.caught_up.is_set()

    def _track(self, event: RecordedEvent, counting: bool) -> None:
        stream = event.stream_id
        match event.type:
            case "JobQueued" | "JobRequeued":
                if len(self._queued_at) < _MAX_TRACKED:
                    self._queued_at[stream] = event.recorded_at
                if event.type == "JobQueued" and event.metadata.trace:
                    if len(self._job_traces) < _MAX_TRACKED:
                        self._job_traces[stream] = dict(event.metadata.trace)
                elif counting:
                    metrics.JOBS_REQUEUED.inc()
            case "JobStarted":
                since = self._queued_at.pop(stream, None)
                if counting and since is not None:
                    wait = (event.recorded_at - since).total_seconds()
                    metrics.QUEUE_WAIT_SECONDS.observe(max(wait, 0.0))
            case "JobLost" | "JobPreempted" | "JobTimedOut":
                if counting:
                    _COUNTERS[event.type].inc()
            case kind if kind in _DONE:
                self._queued_at.pop(stream, None)
                self._job_traces.pop(stream, None)

    async def _on_events(self, batch: Sequence[RecordedEvent]) -> None:
        counting = self._counting()
        for event in batch:
            self._track(event, counting)
        await super()._on_events(batch)

    async def run_pass(self, *, force_view: bool = False) -> PassResult:
        started = time.perf_counter()
        result = await super().run_pass(force_view=force_view)
        metrics.LEADER.set(1 if self.is_leader else 0)
        if result.processed:
            metrics.PLACEMENT_SECONDS.observe(time.perf_counter() - started)
            metrics.QUEUE_LENGTH.set(result.queued)
        return result

    async def _execute(self, decision: Decision) -> bool:
        carrier = self._job_traces.get(job_stream(decision.job_id))
        decided_in = trace.get_current_span().get_span_context()
        with _tracer.start_as_current_span(
            "scheduler place job",
            context=extract_context(carrier) if carrier else None,
            links=[trace.Link(decided_in)] if decided_in.is_valid else None,
            attributes={
                "job.id": decision.job_id,
                "job.attempt": decision.attempt,
                "runner.id": decision.runner_id,
                "gpu.ids": list(decision.gpu_ids),
            },
        ):
            return await super()._execute(decision)
