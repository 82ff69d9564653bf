"""The job endpoints: writes become commands, reads come from the read model.

Handlers that take a body declare it as ``data`` so the OpenAPI schema shows it, then
decode the raw bytes strictly (``decoding.strict_body``): Litestar's own conversion is lax.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any, Final

import msgspec
from litestar import Controller, Request, Response, delete, get, post, route
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, HeaderParameter, JSONBody, PathParameter, QueryParameter

from ...bus.messages import CommandReply
from ...core.commands import (
    NAME_PATTERN,
    CancelJob,
    ChangePriority,
    DeleteJob,
    PauseJob,
    RequestExport,
    ResumeJob,
    StartJob,
    StopJob,
)
from ...core.errors import JobNotFound
from ...core.ids import JOB_ID_PATTERN
from ...core.job import Export, JobStatus
from ...projections.read_models.interface import MAX_PAGE_SIZE
from ...projections.read_models.views import JobSummary
from ..auth.principal import principal
from ..decoding import optional_strict_body, strict_body
from ..deps import ApiDeps, Deps
from ..dispatch import caught_up, idempotent_command_id, reply_status, send
from ..problems import problems
from ..sse import EventStream, event_stream, last_event_id
from .changes import follow_job_changes
from .labels import list_by_label, parse_label
from .schemas import (
    CreateJobRequest,
    CreateJobResponse,
    EventsResponse,
    ExportRequest,
    ExportResponse,
    JobCommandResponse,
    JobListResponse,
    JobStatusResponse,
    LogsResponse,
    PriorityRequest,
    PriorityResponse,
    ProgressResponse,
)
from .streams import follow_events, follow_logs, follow_progress, progress_of
from .submission import prefer_wait_s, submit_job

_log = logging.getLogger(__name__)

JobIdPath = Annotated[
    str,
    PathParameter(pattern=JOB_ID_PATTERN, description="The job's id.", max_length=64),
]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=255,
        required=False,
        description=(
            "Retrying a request with the same key returns the first request's outcome "
            "instead of acting twice."
        ),
    ),
]
PreferWait = Annotated[
    str | None,
    HeaderParameter(
        name="Prefer",
        required=False,
        max_length=200,
        description=(
            "`wait=N` (RFC 7240, N up to 5 seconds): wait that long at most for the "
            "scheduler's answer (its queue position, or the job placed at once) instead of "
            "answering `queue_source: scheduler_pending` with no position."
        ),
    ),
]
OwnerFilter = Annotated[
    str | None,
    QueryParameter(
        pattern=NAME_PATTERN,
        max_length=64,
        description=(
            "Only this owner's jobs (the owner of the API key that submitted them). A `user` "
            "key always sees its own jobs only: another owner gives nothing."
        ),
    ),
]
Follow = Annotated[
    bool,
    QueryParameter(description="Stream as server-sent events (text/event-stream) instead."),
]

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


def finished_export(summary: JobSummary, checkpoint: str | None) -> Export | None:
    """The succeeded export that made a repeated request a no-op (the domain's matching)."""
    latest = summary.last_checkpoint
    target = checkpoint or (latest.path if latest is not None else None)
    for export in reversed(summary.exports):
        name = export.checkpoint.rstrip("/").rsplit("/", 1)[-1]
        if export.status == "succeeded" and target in (export.checkpoint, name):
            return export
    return None


async def load_job(deps: ApiDeps, job_id: str) -> JobSummary:
    summary = await deps.read_model.get_job(job_id)
    if summary is None:
        raise JobNotFound(f"job {job_id!r} does not exist")
    return summary


async def current_status(deps: ApiDeps, job_id: str) -> JobStatus | None:
    """Best effort, for answers to commands that recorded nothing: the read model may lag."""
    try:
        summary = await deps.read_model.get_job(job_id)
    except Exception:
        _log.warning("status lookup for %s failed", job_id, exc_info=True)
        return None
    return None if summary is None else summary.status


async def control_answer(
    deps: ApiDeps, job_id: str, reply: CommandReply, action: str
) -> JobCommandResponse:
    """The answer to a pause, resume or cancel: what was recorded, or that it already was so."""
    status = reply_status(reply)
    if not reply.events:
        status = await current_status(deps, job_id)
        message = f"job {job_id} is already {status.value if status else 'so'}; nothing to {action}"
    elif status is JobStatus.STOPPING:
        message = f"{action} of job {job_id} requested; its runner saves a checkpoint and stops"
    else:
        message = f"job {job_id} is {status.value if status else 'changed'}"
    return JobCommandResponse(
        job_id=job_id, status=status, message=message, changed=bool(reply.events)
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


class JobsController(Controller):
    path = "/jobs"
    tags = ("jobs",)

    # --- writes -----------------------------------------------------------------------------

    @post(
        "/",
        status_code=201,
        summary="Create a training job",
        description=(
            "Queued jobs start by themselves when GPUs matching them free up "
            "(`auto_start: false` holds the job until started). The answer comes from the "
            "recorded command, so `status` is `queued` or `held`; the seed's `pending` "
            "(GPUs chosen, not yet running) is this API's `scheduled`."
        ),
        responses=problems(400, 409, 413, 422, 503),
    )
    async def create_job(
        self,
        *,
        deps: Deps,
        request: Request[Any, Any, Any],
        data: JSONBody[CreateJobRequest],
        idempotency_key: IdempotencyKey = None,
        prefer: PreferWait = None,
    ) -> Response[CreateJobResponse]:
        body = await strict_body(request, CreateJobRequest)
        answer = await submit_job(deps, body, idempotency_key, wait_s=prefer_wait_s(prefer))
        location = f"{request.url.path.rstrip('/')}/{answer.job_id}"
        return Response(answer, status_code=201, headers={"Location": location})

    @post(
        "/{job_id:str}/start",
        status_code=200,
        summary="Start a job",
        description=(
            "Releases a held job into the queue, or queues a stopped or failed job again "
            "(resuming from its last checkpoint). A queued or running job is left as it is: "
            "queued jobs start by themselves."
        ),
        responses=problems(404, 409, 422, 503),
    )
    async def start_job(
        self, deps: Deps, job_id: JobIdPath, idempotency_key: IdempotencyKey = None
    ) -> JobCommandResponse:
        command_id = idempotent_command_id(idempotency_key, f"start:{job_id}")
        reply = await send(deps, StartJob(job_id=job_id), command_id=command_id)
        types = [event.type for event in reply.events]
        if not types:
            status = await current_status(deps, job_id)
            shown = status.value if status is not None else "queued or running"
            message = f"job {job_id} is already {shown}; a queued job starts by itself"
        elif "JobReleased" in types:
            message = f"job {job_id} released from hold and queued"
        else:
            message = f"job {job_id} queued again; it resumes from its last checkpoint if any"
        return JobCommandResponse(
            job_id=job_id,
            status=reply_status(reply) or await current_status(deps, job_id),
            message=message,
            changed=bool(types),
        )

    @post(
        "/{job_id:str}/stop",
        status_code=200,
        summary="Stop a job",
        description=(
            "A held or queued job stops at once; a scheduled or running one is asked to stop "
            "(status `stopping`) and becomes `stopped` when its runner confirms."
        ),
        responses=problems(404, 409, 422, 503),
    )
    async def stop_job(
        self, deps: Deps, job_id: JobIdPath, idempotency_key: IdempotencyKey = None
    ) -> JobCommandResponse:
        command_id = idempotent_command_id(idempotency_key, f"stop:{job_id}")
        reply = await send(deps, StopJob(job_id=job_id), command_id=command_id)
        status = reply_status(reply)
        if status is JobStatus.STOPPED:
            message = f"job {job_id} stopped"
        elif status is JobStatus.STOPPING:
            message = f"job {job_id} is stopping; its runner saves and ends the process"
        else:
            status = await current_status(deps, job_id)
            message = f"job {job_id} is already stopping"
        return JobCommandResponse(
            job_id=job_id, status=status, message=message, changed=bool(reply.events)
        )

    @post(
        "/{job_id:str}/pause",
        status_code=200,
        summary="Pause a job",
        description=(
            "Like stop, but the job rests as `paused` (resume it with `/resume`). A queued job "
            "pauses at once; a running one saves a checkpoint first (`stopping`)."
        ),
        responses=problems(404, 409, 422, 503),
    )
    async def pause_job(
        self, deps: Deps, job_id: JobIdPath, idempotency_key: IdempotencyKey = None
    ) -> JobCommandResponse:
        command_id = idempotent_command_id(idempotency_key, f"pause:{job_id}")
        reply = await send(deps, PauseJob(job_id=job_id), command_id=command_id)
        return await control_answer(deps, job_id, reply, "pause")

    @post(
        "/{job_id:str}/resume",
        status_code=200,
        summary="Resume a paused job",
        description="Queues a paused (or stopped) job again, from its last checkpoint.",
        responses=problems(404, 409, 422, 503),
    )
    async def resume_job(
        self, deps: Deps, job_id: JobIdPath, idempotency_key: IdempotencyKey = None
    ) -> JobCommandResponse:
        command_id = idempotent_command_id(idempotency_key, f"resume:{job_id}")
        reply = await send(deps, ResumeJob(job_id=job_id), command_id=command_id)
        return await control_answer(deps, job_id, reply, "resume")

    @post(
        "/{job_id:str}/cancel",
        status_code=200,
        summary="Cancel a job for good",
        description=(
            "Unlike stop, final: a cancelled job cannot be started again. A running job "
            "saves a checkpoint first (`stopping`), then becomes `cancelled`."
        ),
        responses=problems(404, 409, 422, 503),
    )
    async def cancel_job(
        self, deps: Deps, job_id: JobIdPath, idempotency_key: IdempotencyKey = None
    ) -> JobCommandResponse:
        command_id = idempotent_command_id(idempotency_key, f"cancel:{job_id}")
        reply = await send(deps, CancelJob(job_id=job_id), command_id=command_id)
        return await control_answer(deps, job_id, reply, "cancel")

    @post(
        "/{job_id:str}/export",
        status_code=200,
        summary="Export the model (merge the LoRA adapter)",
        description=(
            "Merges the adapter of a checkpoint (the latest by default) on the runner that "
            "holds it. Only for finished or stopped LoRA jobs with a checkpoint."
        ),
        responses=problems(400, 404, 409, 422, 503),
    )
    async def export_job(
        self,
        *,
        deps: Deps,
        request: Request[Any, Any, Any],
        job_id: JobIdPath,
        data: JSONBody[ExportRequest | None] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> ExportResponse:
        body = await optional_strict_body(request, ExportRequest) or ExportRequest()
        command = RequestExport(job_id=job_id, checkpoint=body.checkpoint, overwrite=body.overwrite)
        command_id = idempotent_command_id(idempotency_key, f"export:{job_id}")
        reply = await send(deps, command, command_id=command_id)
        changed = bool(reply.events)
        if changed and not await caught_up(deps, reply.events[-1].position):
            return ExportResponse(
                job_id=job_id, changed=True, message=f"export of job {job_id} requested"
            )
        summary = await deps.read_model.get_job(job_id)
        if summary is None:
            export = None
        elif changed:
            export = summary.exports[-1] if summary.exports else None
        else:
            export = finished_export(summary, body.checkpoint)
        message = (
            f"export of job {job_id} requested"
            if changed
            else "this checkpoint is already exported; pass overwrite=true to export it again"
        )
        return ExportResponse(
            job_id=job_id,
            changed=changed,
            message=message,
            export_id=export.export_id if export else None,
            checkpoint=export.checkpoint if export else None,
            export_status=export.status if export else None,
            artifact_path=export.artifact_path if export else None,
        )

    @route(
        "/{job_id:str}/priority",
        http_method=["PUT", "PATCH"],
        status_code=200,
        summary="Change a waiting job's priority",
        description="Only held and queued jobs; 0-10, larger is more urgent.",
        responses=problems(400, 404, 409, 422, 503),
    )
    async def change_priority(
        self,
        *,
        deps: Deps,
        request: Request[Any, Any, Any],
        job_id: JobIdPath,
        data: JSONBody[PriorityRequest],
        idempotency_key: IdempotencyKey = None,
    ) -> PriorityResponse:
        body = await strict_body(request, PriorityRequest)
        command_id = idempotent_command_id(idempotency_key, f"priority:{job_id}")
        reply = await send(
            deps, ChangePriority(job_id=job_id, priority=body.priority), command_id=command_id
        )
        changed = bool(reply.events)
        return PriorityResponse(
            job_id=job_id,
            priority=body.priority,
            status=await current_status(deps, job_id),
            changed=changed,
            message=(
                f"job {job_id} now has priority {body.priority}"
                if changed
                else f"job {job_id} already has priority {body.priority}"
            ),
        )

    @delete(
        "/{job_id:str}",
        status_code=204,
        summary="Delete a job",
        description="A scheduled, running or stopping job must be stopped first (409).",
        responses=problems(404, 409, 422, 503),
    )
    async def delete_job(
        self, deps: Deps, job_id: JobIdPath, idempotency_key: IdempotencyKey = None
    ) -> None:
        command_id = idempotent_command_id(idempotency_key, f"delete:{job_id}")
        await send(deps, DeleteJob(job_id=job_id), command_id=command_id)

    # --- reads ------------------------------------------------------------------------------

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
            "Statuses: held, queued, scheduled (the seed's `pending`: GPUs chosen, runner "
            "starting it), running, stopping, succeeded, failed, stopped, paused, cancelled."
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
        description="`history=true` adds the loss curve; `follow=true` streams updates (SSE).",
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
        return progress_of(summary, curve)

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
