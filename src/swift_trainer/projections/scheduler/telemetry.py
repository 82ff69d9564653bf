"""The scheduler's observer as deployed: passes measured, each placement traced per job.

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

import contextlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Final

from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram

from ...bus.trace_headers import extract_context
from ...core.ids import job_stream
from ...core.store import RecordedEvent
from .pass_result import PassResult
from .placement import Decision

_tracer = trace.get_tracer(__name__)

#: Jobs remembered at most (queued-at times, trace carriers): a bound nobody should reach.
_MAX_TRACKED: Final = 200_000
#: After these a job needs no placement until it is queued again.
_DONE: Final = frozenset({"JobSucceeded", "JobFailed", "JobStopped", "JobDeleted"})


class SchedulerTelemetry:
    """A ``SchedulerObserver`` with Prometheus metrics and OpenTelemetry spans."""

    def __init__(self) -> None:
        #: When each waiting job entered the queue (by stream id), for the queue wait.
        self._queued_at: dict[str, datetime] = {}
        #: The trace context of the request that last queued each job (by stream id).
        self._job_traces: dict[str, dict[str, str]] = {}

    def on_events(self, batch: Sequence[RecordedEvent], *, counting: bool) -> None:
        for event in batch:
            self._track(event, counting)

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
                    JOBS_REQUEUED.inc()
            case "JobStarted":
                since = self._queued_at.pop(stream, None)
                if counting and since is not None:
                    wait = (event.recorded_at - since).total_seconds()
                    QUEUE_WAIT_SECONDS.observe(max(wait, 0.0))
            case "JobLost" | "JobPreempted" | "JobTimedOut":
                if counting:
                    _COUNTERS[event.type].inc()
            case kind if kind in _DONE:
                self._queued_at.pop(stream, None)
                self._job_traces.pop(stream, None)

    def on_pass(self, result: PassResult, seconds: float, *, leader: bool) -> None:
        LEADER.set(1 if leader else 0)
        if result.processed:
            PLACEMENT_SECONDS.observe(seconds)
            QUEUE_LENGTH.set(result.queued)

    def on_decided(self, seconds: float) -> None:
        DECISION_SECONDS.observe(seconds)

    @contextlib.contextmanager
    def placing(self, decision: Decision) -> Iterator[object]:
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
        ) as span:
            yield span


# --- the instruments ------------------------------------------------------------------------

PLACEMENT_SECONDS: Final = Histogram(
    "swift_trainer_placement_pass_duration_seconds",
    "Time one leading scheduler pass took (lost-runner check, placement, queue view).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
DECISION_SECONDS: Final = Histogram(
    "swift_trainer_placement_decision_seconds",
    "Time a leading pass took to choose placements and preemptions, without the commands "
    "it then sends.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
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
JOBS_PREEMPTED: Final = Counter(
    "swift_trainer_jobs_preempted",
    "Jobs stopped with a checkpoint and queued again to make room for a job of higher priority.",
)
JOBS_TIMED_OUT: Final = Counter(
    "swift_trainer_jobs_timed_out",
    "Jobs stopped with a checkpoint at their max_runtime.",
)
#: Events counted as they come, by type.
_COUNTERS: Final = {
    "JobLost": JOBS_LOST,
    "JobPreempted": JOBS_PREEMPTED,
    "JobTimedOut": JOBS_TIMED_OUT,
}
