"""Live views of one job: its log lines, its events and its progress, as SSE streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Final

from litestar.response.sse import ServerSentEventMessage

from ...bus import subjects
from ...core.job import FINISHED
from ...projections.read_models.interface import MAX_PAGE_SIZE
from ...projections.read_models.views import JobSummary, MetricPoint, ProgressView
from ..deps import ApiDeps
from ..durations import describe_duration
from ..sse import Poll, data_message, follow
from .schemas import ProgressResponse

#: What a progress answer copies from the read model's progress as it is.
_SHARED_FIELDS: Final = tuple(
    name for name in ProgressResponse.__struct_fields__ if name in ProgressView.__struct_fields__
)


def progress_of(summary: JobSummary, history: list[MetricPoint] | None = None) -> ProgressResponse:
    p = summary.progress
    if p is None:
        return ProgressResponse(job_id=summary.job_id, status=summary.status, history=history)
    return ProgressResponse(
        job_id=summary.job_id,
        status=summary.status,
        **{name: getattr(p, name) for name in _SHARED_FIELDS},
        elapsed=describe_duration(p.elapsed_s),
        remaining=describe_duration(p.remaining_s),
        history=history,
    )


def _settled(summary: JobSummary | None, now: datetime, grace_s: float) -> bool:
    """Deleted, or finished long enough ago that the runner's last lines have arrived."""
    if summary is None:
        return True
    if summary.status not in FINISHED:
        return False
    done_at = summary.finished_at or summary.updated_at
    return done_at is None or (now - done_at).total_seconds() >= grace_s


def _follow(deps: ApiDeps, poll: Poll, wake_on: list[str]) -> AsyncIterator[ServerSentEventMessage]:
    """Poll on every message on ``wake_on``, and every ``stream_poll_s`` regardless."""
    return follow(
        poll,
        subscribe=deps.subscribe,
        subjects=wake_on,
        poll_s=deps.stream_poll_s,
        heartbeat_s=deps.stream_heartbeat_s,
    )


def follow_logs(
    deps: ApiDeps, job_id: str, *, after: int | None, tail: int
) -> AsyncIterator[ServerSentEventMessage]:
    """New lines as they arrive; without ``after``, the last ``tail`` lines first."""
    cursor = after

    async def poll() -> tuple[list[ServerSentEventMessage], bool]:
        nonlocal cursor
        if cursor is None:
            lines = await deps.read_model.logs(job_id, limit=tail)
            cursor = -1
        else:
            lines = await deps.read_model.logs(job_id, after=cursor, limit=MAX_PAGE_SIZE)
        if lines:
            cursor = lines[-1].seq
            return [data_message(line, message_id=line.seq) for line in lines], False
        summary = await deps.read_model.get_job(job_id)
        return [], _settled(summary, deps.clock(), deps.stream_end_grace_s)

    return _follow(deps, poll, [subjects.log_subject(job_id), subjects.job_events_filter(job_id)])


def follow_events(
    deps: ApiDeps, job_id: str, *, after: int
) -> AsyncIterator[ServerSentEventMessage]:
    """The job's history from ``after`` on, then each new event; ends once it is deleted."""
    cursor = after

    async def poll() -> tuple[list[ServerSentEventMessage], bool]:
        nonlocal cursor
        events = await deps.read_model.job_events(job_id, after=cursor, limit=MAX_PAGE_SIZE)
        if events:
            cursor = events[-1].position
            return [data_message(event, message_id=event.position) for event in events], False
        return [], await deps.read_model.get_job(job_id) is None

    return _follow(deps, poll, [subjects.job_events_filter(job_id)])


def follow_progress(deps: ApiDeps, job_id: str) -> AsyncIterator[ServerSentEventMessage]:
    """The progress now, then each change; ends once the job has finished or is deleted."""
    last: ProgressResponse | None = None

    async def poll() -> tuple[list[ServerSentEventMessage], bool]:
        nonlocal last
        summary = await deps.read_model.get_job(job_id)
        if summary is None:
            return [], True
        current = progress_of(summary)
        messages = [] if current == last else [data_message(current, message_id=summary.version)]
        last = current
        return messages, summary.status in FINISHED

    return _follow(deps, poll, [subjects.job_events_filter(job_id)])
