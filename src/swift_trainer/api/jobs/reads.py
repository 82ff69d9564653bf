"""The job read endpoints: lists, one job, its status, progress, logs and events.

Everything here comes from the read model; ``controllers`` holds the writes, which become
commands. Both controllers share the ``/jobs`` path (Litestar routes by path and method).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Final

import msgspec
from litestar import Controller, Request, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, QueryParameter

from ...core.errors import JobNotFound
from ...core.job import JobStatus
from ...projections.read_models.interface import MAX_PAGE_SIZE
from ...projections.read_models.views import JobSummary
from ..auth.principal import principal
from ..deps import Deps
from ..problems import problems
from ..sse import EventStream, event_stream, last_event_id
from .changes import follow_job_changes
from .curve import downsample_curve
from .labels import list_by_label, parse_label
from .params import Follow, JobIdPath, OwnerFilter, load_job
from .schemas import (
    EventsResponse,
    JobListResponse,
    JobStatusResponse,
    LogsResponse,
    ProgressResponse,
)
from .streams import follow_events, follow_logs, follow_progress, progress_of

_status_decoder: Final = msgspec.json.Decoder(JobStatusResponse)

_SSE_DOC: Final = (
    "Server-sent events: each message's data is one JSON item, its id the cursor that "
    "Last-Event-ID resumes from; an `end` event closes the stream."
)


def followable(page: type[Any]) -> ResponseSpec:
    """Document the JSON page; the SSE variant is documented on the ``/stream`` twin."""
    return ResponseSpec(
        data_container=page,
        description="JSON; with `follow=true` a text/event-stream (see the `/stream` twin).",
        generate_examples=False,
    )


def listed_owner(asked: str | None) -> str | None:
    """The owner whose index a list reads: a user key's own, whatever it asked for."""
    caller = principal()
    if caller.sees_everything():
        return asked
    return caller.owner


def own_jobs_only(items: Sequence[JobSummary], next_cursor: str | None) -> JobListResponse:
    """A user key lists its owner's jobs only (belt and braces over the owner index)."""
    caller = principal()
    if not caller.sees_everything():
        items = [job for job in items if caller.may_see(job.owner)]
    return JobListResponse(items=list(items), next_cursor=next_cursor)


class JobReadsController(Controller):
    path = "/jobs"
    tags = ("jobs",)

    @get(
        "/",
        summary="List jobs",
        description=(
            "Newest first; pass `next_cursor` back as `cursor` for the next page. "
            "`/jobs/changes/stream` follows the list's changes."
        ),
        responses=problems(422, 503),
    )
    async def list_jobs(
        self,
        *,
        deps: Deps,
        status: FromQuery[JobStatus | None] = None,
        priority: Annotated[int | None, QueryParameter(ge=0, le=10)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE)] = 50,
        cursor: Annotated[str | None, QueryParameter(min_length=1, max_length=256)] = None,
        label: Annotated[
            str | None,
            QueryParameter(
                min_length=2,
                max_length=400,
                description=(
                    "`key=value`: only jobs with this label. Each request reads at most "
                    "5000 jobs, so a page may be short or empty: follow `next_cursor`."
                ),
            ),
        ] = None,
        owner: OwnerFilter = None,
    ) -> JobListResponse:
        caller = principal()
        scope = listed_owner(owner)
        if owner is not None and scope != owner:
            return JobListResponse(items=[])  # a user asking for someone else's jobs
        if scope is None and not caller.sees_everything():
            return JobListResponse(items=[])  # a user key without an owner owns nothing
        if label is not None:
            found = await list_by_label(
                deps.read_model,
                parse_label(label),
                status=status,
                priority=priority,
                cursor=cursor,
                limit=limit,
                owner=scope,
            )
            return own_jobs_only(found.items, found.next_cursor)
        page = await deps.read_model.list_jobs(
            status=status, priority=priority, cursor=cursor, limit=limit, owner=scope
        )
        return own_jobs_only(page.items, page.next_cursor)

    @get(
        "/changes/stream",
        summary="Follow the jobs list's changes (SSE)",
        description=(
            "What the dashboard's table follows instead of polling: a `ready` event, then one "
            "message per batch of changed jobs, `{jobs, deleted, position}`, each job as "
            "`GET /jobs` shows it; only jobs the caller may see and, with `owner`, that "
            "owner's. `reset` asks the client to reload its page (too many changed at once), "
            "`end` to poll `GET /jobs` instead (no live feed). No replay: on reconnecting, "
            "reload the page."
        ),
        media_type="text/event-stream",
        responses=problems(422, 503),
    )
    async def stream_job_changes(self, deps: Deps, owner: OwnerFilter = None) -> EventStream:
        return event_stream(follow_job_changes(deps, principal(), owner=owner))

    @get(
        "/{job_id:str}",
        summary="Job details",
        description=(
            "Statuses: held, waiting (for the jobs in after), queued, scheduled (GPUs chosen, "
            "the runner is starting it), running, stopping, succeeded, failed, stopped, "
            "paused, timed_out (reached max_runtime), cancelled."
        ),
        responses=problems(404, 422, 503),
    )
    async def get_job(self, deps: Deps, job_id: JobIdPath) -> JobSummary:
        return await load_job(deps, job_id)

    @get(
        "/{job_id:str}/status",
        summary="Job status",
        responses=problems(404, 422, 503),
    )
    async def job_status(self, deps: Deps, job_id: JobIdPath) -> JobStatusResponse:
        raw = await deps.read_model.get_job_json(job_id)
        if raw is None:
            raise JobNotFound(f"job {job_id!r} does not exist")
        return _status_decoder.decode(raw)

    @get(
        "/{job_id:str}/progress",
        summary="Training progress",
        description=(
            "`history=true` adds the training curve: every logged step, or past 1,000 "
            "points the steps that keep each series' shape (largest-triangle-three-buckets); "
            "`follow=true` streams updates (SSE)."
        ),
        responses={**problems(404, 422, 503), 200: followable(ProgressResponse)},
    )
    async def job_progress(
        self,
        *,
        deps: Deps,
        job_id: JobIdPath,
        history: FromQuery[bool] = False,
        follow: Follow = False,
    ) -> ProgressResponse | EventStream:
        summary = await load_job(deps, job_id)
        if follow:
            return event_stream(follow_progress(deps, job_id))
        curve = await deps.read_model.metric_history(job_id) if history else None
        return progress_of(summary, None if curve is None else downsample_curve(curve))

    @get(
        "/{job_id:str}/progress/stream",
        summary="Follow training progress (SSE)",
        description=_SSE_DOC,
        media_type="text/event-stream",
        responses=problems(404, 422, 503),
    )
    async def stream_progress(self, deps: Deps, job_id: JobIdPath) -> EventStream:
        await load_job(deps, job_id)
        return event_stream(follow_progress(deps, job_id))

    @get(
        "/{job_id:str}/logs",
        summary="Training logs",
        description=(
            "Without `after`: the last `limit` lines. With `after`: lines with a greater "
            "`seq`; pass `next_after` back to page forward. `follow=true` streams (SSE)."
        ),
        responses={**problems(404, 422, 503), 200: followable(LogsResponse)},
    )
    async def job_logs(
        self,
        *,
        deps: Deps,
        request: Request[Any, Any, Any],
        job_id: JobIdPath,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE)] = 50,
        after: Annotated[int | None, QueryParameter(ge=-1)] = None,
        follow: Follow = False,
    ) -> LogsResponse | EventStream:
        await load_job(deps, job_id)
        if follow:
            resume = last_event_id(request)
            start = resume if resume is not None else after
            return event_stream(follow_logs(deps, job_id, after=start, tail=limit))
        lines = await deps.read_model.logs(job_id, after=after, limit=limit)
        next_after = lines[-1].seq if lines else after
        return LogsResponse(job_id=job_id, lines=lines, next_after=next_after)

    @get(
        "/{job_id:str}/logs/stream",
        summary="Follow training logs (SSE)",
        description=_SSE_DOC,
        media_type="text/event-stream",
        responses=problems(404, 422, 503),
    )
    async def stream_logs(
        self,
        *,
        deps: Deps,
        request: Request[Any, Any, Any],
        job_id: JobIdPath,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE)] = 50,
        after: Annotated[int | None, QueryParameter(ge=-1)] = None,
    ) -> EventStream:
        await load_job(deps, job_id)
        resume = last_event_id(request)
        start = resume if resume is not None else after
        return event_stream(follow_logs(deps, job_id, after=start, tail=limit))

    @get(
        "/{job_id:str}/events",
        summary="Training events",
        description=(
            "The job's recorded events, oldest first, after global position `after`; pass "
            "`next_after` back for the next page. `follow=true` streams (SSE)."
        ),
        responses={**problems(404, 422, 503), 200: followable(EventsResponse)},
    )
    async def job_events(
        self,
        *,
        deps: Deps,
        request: Request[Any, Any, Any],
        job_id: JobIdPath,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE)] = 100,
        after: Annotated[int, QueryParameter(ge=0)] = 0,
        follow: Follow = False,
    ) -> EventsResponse | EventStream:
        await load_job(deps, job_id)
        if follow:
            resume = last_event_id(request)
            return event_stream(follow_events(deps, job_id, after=max(resume or after, 0)))
        events = await deps.read_model.job_events(job_id, after=after, limit=limit)
        return EventsResponse(
            job_id=job_id,
            events=events,
            next_after=events[-1].position if events else after,
            has_more=len(events) == limit,
        )

    @get(
        "/{job_id:str}/events/stream",
        summary="Follow training events (SSE)",
        description=_SSE_DOC,
        media_type="text/event-stream",
        responses=problems(404, 422, 503),
    )
    async def stream_events(
        self,
        *,
        deps: Deps,
        request: Request[Any, Any, Any],
        job_id: JobIdPath,
        after: Annotated[int, QueryParameter(ge=0)] = 0,
    ) -> EventStream:
        await load_job(deps, job_id)
        resume = last_event_id(request)
        return event_stream(follow_events(deps, job_id, after=max(resume or after, 0)))
