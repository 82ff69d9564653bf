"""The pure half of the read models: from recorded events to a plan of changes.

Both backends hand a batch to ``plan_batch`` with the job folds they hold and persist the
plan it returns; neither decides anything about jobs itself. Job status rules come from
``core.job.evolve``, so the read side can never disagree with the aggregate.

A plan is per job, not per event: a batch of a thousand progress reports becomes one
summary write and one append of a thousand points, which keeps Redis at one round trip.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

import msgspec

from swift_trainer.core import events as e
from swift_trainer.core.access import is_access_stream
from swift_trainer.core.errors import MessageError
from swift_trainer.core.gang import rank_runners
from swift_trainer.core.job import JobState, JobStatus, evolve, initial_state
from swift_trainer.core.progress import MetricSample
from swift_trainer.core.queue_processor import QueueProcessorState, evolve_processor
from swift_trainer.core.store import RecordedEvent
from swift_trainer.core.sweep import is_sweep_stream
from swift_trainer.core.webhook_events import is_webhook_stream

from .interface import InvalidCursor
from .views import EventLogEntry, JobFold, JobSummary, Limits, MetricPoint, ProgressView

log = logging.getLogger(__name__)

#: Statuses a listed job can have; a deleted job is not listed at all.
LISTED_STATUSES: Final = tuple(s for s in JobStatus if s is not JobStatus.DELETED)
#: Text fields longer than this are shortened in the event log (the store keeps them whole).
MAX_TEXT: Final = 1000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR_TAG: Final = b"jobs:"


class ListingKey(NamedTuple):
    """Where a job sits in the list indexes."""

    status: JobStatus
    priority: int
    position: int
    #: The submitting key's owner; None (the operator's jobs) has no owner index.
    owner: str | None = None


class DecodedEvent(NamedTuple):
    recorded: RecordedEvent
    #: None for an event this read model cannot decode: skipped, but its position counts.
    event: e.AnyEvent | None


@dataclass
class JobChange:
    """Everything a batch does to one job, as a backend must persist it."""

    job_id: str
    #: The job's place in the indexes before the batch (None: not listed).
    before: ListingKey | None
    fold: JobFold
    #: The job was deleted in this batch: drop its events, metrics and logs first.
    reset: bool = False
    #: The read model held a fold for the job before the batch, so its event and metric
    #: lists may hold entries already; when False they are empty and need no trimming.
    known: bool = True
    #: Event-log entries and metric points to append (after any reset), oldest first.
    events: list[EventLogEntry] = field(default_factory=list)
    metrics: list[MetricPoint] = field(default_factory=list)

    @property
    def after(self) -> ListingKey | None:
        return listing_key(self.fold)

    @property
    def summary(self) -> JobSummary | None:
        return summarize(self.fold)


@dataclass
class BatchPlan:
    #: Position of the last event of the batch: the new applied position.
    applied: int
    #: How many events the batch holds (decodable or not).
    count: int
    jobs: dict[str, JobChange] = field(default_factory=dict)
    #: New processor state, when the batch changed it.
    processor: QueueProcessorState | None = None


# --- decoding and redelivery ----------------------------------------------------------------


def fresh_events(events: Iterable[RecordedEvent], applied: int) -> list[RecordedEvent]:
    """Drop redeliveries: anything at or below the applied (or an earlier) position."""
    fresh: list[RecordedEvent] = []
    high = applied
    for recorded in events:
        if recorded.position > high:
            fresh.append(recorded)
            high = recorded.position
    return fresh


def decode_recorded(recorded: RecordedEvent) -> DecodedEvent:
    """Decode, or skip with a warning: one bad message must not stop the projection."""
    if (
        is_webhook_stream(recorded.stream_id)
        or is_access_stream(recorded.stream_id)
        or is_sweep_stream(recorded.stream_id)
    ):
        return DecodedEvent(recorded, None)  # webhooks and API keys are no job's business
    try:
        event = e.decode_event(recorded.type, recorded.payload, recorded.schema_version)
    except MessageError as exc:
        log.warning("read model skips event at position %d: %s", recorded.position, exc)
        return DecodedEvent(recorded, None)
    return DecodedEvent(recorded, event)


def job_ids(decoded: Iterable[DecodedEvent]) -> set[str]:
    return {d.event.job_id for d in decoded if isinstance(d.event, e.JobEvent)}


# --- planning -------------------------------------------------------------------------------


def plan_batch(
    decoded: Sequence[DecodedEvent],
    *,
    folds: Mapping[str, JobFold],
    processor: QueueProcessorState,
    limits: Limits,
) -> BatchPlan:
    """Fold a batch of fresh events over the given state; ``folds`` is only read."""
    if not decoded:
        raise ValueError("a plan needs at least one event")
    plan = BatchPlan(applied=decoded[-1].recorded.position, count=len(decoded))
    for recorded, event in decoded:
        if isinstance(event, e.QueueProcessorPaused | e.QueueProcessorResumed):
            processor = evolve_processor(processor, event)
            plan.processor = processor
        elif isinstance(event, e.GpusClaimed | e.GpusReleased):
            # The scheduler's GPU ledger: its effect shows in the jobs' own events.
            continue
        elif isinstance(event, e.RunnerDrained | e.RunnerUndrained | e.GpuHealthChanged):
            continue  # the fleet: the scheduler's view carries it
        elif event is not None:
            change = plan.jobs.get(event.job_id)
            if change is None:
                fold = folds.get(event.job_id)
                change = JobChange(
                    job_id=event.job_id,
                    before=listing_key(fold),
                    fold=fold or JobFold(state=initial_state(event.job_id)),
                    known=fold is not None,
                )
                plan.jobs[event.job_id] = change
            _plan_event(change, recorded, event, limits)
    return plan


def _plan_event(
    change: JobChange,
    recorded: RecordedEvent,
    event: e.AnyJobEvent,
    limits: Limits,
) -> None:
    old = change.fold
    submitted = recorded.position if isinstance(event, e.JobSubmitted) else old.submitted_position
    change.fold = JobFold(
        state=evolve(old.state, event),
        submitted_position=submitted,
        updated_position=recorded.position,
        updated_at=event.at,
    )
    if isinstance(event, e.JobDeleted):
        change.reset = True
        change.events.clear()
        change.metrics.clear()
        return
    if listing_key(change.fold) is None:
        return  # an event for a job never submitted: nothing to show it under
    change.events.append(event_entry(recorded, event))
    if len(change.events) > limits.events_per_job:
        del change.events[: -limits.events_per_job]
    if isinstance(event, e.JobProgressed):
        for sample in event.earlier:
            change.metrics.append(sample_point(sample, event.at))
        point = metric_point(event)
        if point is not None:
            change.metrics.append(point)
        if len(change.metrics) > limits.metric_points:
            del change.metrics[: -limits.metric_points]


# --- views ----------------------------------------------------------------------------------


def listing_key(fold: JobFold | None) -> ListingKey | None:
    if fold is None:
        return None
    state = fold.state
    if state.spec is None or state.status is JobStatus.DELETED:
        return None
    return ListingKey(state.status, state.priority, fold.submitted_position, state.spec.owner)


def index_names(key: ListingKey) -> tuple[str, ...]:
    """Every index a job belongs to, so any filter is one range read of one index.

    An owned job sits in a second set of the same indexes under its owner, so a user's
    list (or ``?owner=``) reads only that owner's jobs however many others there are.
    """
    status, priority = key.status.value, key.priority
    shared = ("all", f"s:{status}", f"p:{priority}", f"sp:{status}:{priority}")
    if key.owner is None:
        return shared
    mine = owner_scope(key.owner)
    return shared + tuple(mine + name for name in shared)


def owner_scope(owner: str) -> str:
    """The owner's index prefix; ``%`` and ``:`` escaped, so no owner name can reach
    into another's indexes."""
    return "o:" + owner.replace("%", "%25").replace(":", "%3A") + ":"


def index_for(status: JobStatus | None, priority: int | None, owner: str | None = None) -> str:
    scope = "" if owner is None else owner_scope(owner)
    if status is not None and priority is not None:
        return f"{scope}sp:{status.value}:{priority}"
    if status is not None:
        return f"{scope}s:{status.value}"
    if priority is not None:
        return f"{scope}p:{priority}"
    return f"{scope}all"


def summarize(fold: JobFold) -> JobSummary | None:
    """The API's view of a job; None once it is deleted (or was never submitted)."""
    state, spec = fold.state, fold.state.spec
    if spec is None or state.status is JobStatus.DELETED:
        return None
    return JobSummary(
        job_id=state.job_id,
        status=state.status,
        priority=state.priority,
        version=state.version,
        submitted_position=fold.submitted_position,
        updated_position=fold.updated_position,
        data_path=spec.data_path,
        model_path=spec.model_path,
        output_dir=spec.output_dir,
        gpu_count=spec.gpu_count,
        labels=dict(spec.labels),
        train_args=spec.train_args,
        auto_start=spec.auto_start,
        max_retries=spec.max_retries,
        gpu_name=spec.gpu_name,
        min_gpu_memory_gb=spec.min_gpu_memory_gb,
        attempt=state.attempt,
        retries=state.retries,
        runner_id=state.runner_id,
        last_runner_id=state.last_runner_id,
        gpu_ids=state.gpu_ids,
        pid=state.pid,
        resume_from=state.resume_from,
        submitted_at=state.submitted_at,
        started_at=state.started_at,
        finished_at=state.finished_at,
        updated_at=fold.updated_at,
        progress=progress_view(state),
        last_checkpoint=state.last_checkpoint,
        checkpoints=state.checkpoints,
        exports=state.exports,
        failure_reason=state.failure_reason,
        exit_code=state.exit_code,
        stop_reason=state.stop_reason,
        training_file=spec.training_file,
        validation_file=spec.validation_file,
        method=spec.method,
        dpo_beta=spec.dpo_beta,
        auto_export=spec.auto_export,
        suffix=spec.suffix,
        metadata=dict(spec.metadata),
        owner=spec.owner,
        after=spec.after,
        tracking=spec.tracking,
        preemptible=spec.preemptible,
        preemptions=state.preemptions,
        preempted_by=state.preempted_by,
        max_runtime=spec.max_runtime,
        failure=state.failure,
        failures=state.failures,
        retry_train_args=state.train_args,
        excluded_gpus=state.excluded_gpus,
        eval_results=dict(state.eval_results),
        eval_error=state.eval_error,
        eval_model=state.eval_model,
        start_warnings=state.start_warnings,
        tracker_urls=dict(state.tracker_urls),
        warnings=state.warnings,
        nodes=spec.nodes,
        host_labels=dict(spec.host_labels),
        hosts=rank_runners(state.runner_id, state.peers),
        peers=state.peers,
    )


def progress_view(state: JobState) -> ProgressView | None:
    p = state.progress
    if p is None:
        return None
    percent: float | None = None
    if p.max_steps:
        percent = round(min(p.step / p.max_steps, 1.0) * 100, 2)
    if state.status is JobStatus.SUCCEEDED:
        percent = 100.0
    return ProgressView(**msgspec.structs.asdict(p), percent=percent)


def metric_point(event: e.JobProgressed) -> MetricPoint | None:
    """A curve point, when the report carries anything to plot."""
    if (
        event.loss is None
        and event.learning_rate is None
        and event.eval_loss is None
        and event.grad_norm is None
    ):
        return None
    return MetricPoint(
        step=event.step,
        at=event.at,
        loss=event.loss,
        learning_rate=event.learning_rate,
        eval_loss=event.eval_loss,
        epoch=event.epoch,
        grad_norm=event.grad_norm,
    )


def sample_point(sample: MetricSample, at: datetime) -> MetricPoint:
    """A logged step that rode along with a later report (stamped with that report's time)."""
    return MetricPoint(
        step=sample.step,
        at=at,
        loss=sample.loss,
        learning_rate=sample.learning_rate,
        eval_loss=sample.eval_loss,
        epoch=sample.epoch,
        grad_norm=sample.grad_norm,
    )


def event_entry(recorded: RecordedEvent, event: e.AnyJobEvent) -> EventLogEntry:
    return EventLogEntry(
        position=recorded.position,
        version=recorded.version,
        event_id=recorded.event_id,
        type=recorded.type,
        at=event.at,
        data=summarise_payload(event),
        actor=recorded.metadata.actor,
    )


def summarise_payload(event: e.Event) -> dict[str, Any]:
    """The event's fields without the envelope; long text keeps its telling end."""
    # Through JSON rather than to_builtins, which keeps tuples: a backend that stores JSON
    # hands back lists, and both backends must hold equal values.
    data: dict[str, Any] = msgspec.json.decode(e.encode_event(event))
    for key in ("type", "at", "job_id"):
        data.pop(key, None)
    for key, value in data.items():
        if isinstance(value, str) and len(value) > MAX_TEXT:
            # A stderr tail ends with the error; other text starts with what matters.
            data[key] = "…" + value[-MAX_TEXT:] if key.endswith("tail") else value[:MAX_TEXT] + "…"
    return data


# --- cursors and times ----------------------------------------------------------------------


def encode_cursor(position: int) -> str:
    """Opaque on purpose: clients pass it back, they do not compute it."""
    return base64.urlsafe_b64encode(_CURSOR_TAG + str(position).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidCursor(f"cursor {cursor!r} is not one this API handed out") from exc
    digits = raw.removeprefix(_CURSOR_TAG)
    if digits == raw or not digits.isdigit():
        raise InvalidCursor(f"cursor {cursor!r} is not one this API handed out")
    return int(digits)


def to_micros(moment: datetime) -> int:
    """Exact integer microseconds since the epoch (a float would drift by a microsecond)."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must carry a timezone")
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)
