"""The job write endpoints: each becomes a command; the reads are in ``reads``.

Handlers that take a body declare it as ``data`` so the OpenAPI schema shows it, then
decode the raw bytes strictly (``decoding.strict_body``): Litestar 2 converts ``data`` with
``msgspec.convert(strict=False)`` and offers no switch. The reads are in ``reads``.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Controller, Request, Response, delete, post, route
from litestar.params import JSONBody

from ...bus.messages import CommandReply
from ...core.commands import (
    CancelJob,
    ChangePriority,
    DeleteJob,
    PauseJob,
    RequestExport,
    ResumeJob,
    StartJob,
    StopJob,
)
from ...core.job import Export, JobStatus
from ...projections.read_models.views import JobSummary
from ..decoding import optional_strict_body, strict_body
from ..deps import ApiDeps, Deps
from ..dispatch import caught_up, idempotent_command_id, reply_status, send
from ..problems import problems
from .params import IdempotencyKey, JobIdPath, PreferWait
from .schemas import (
    CreateJobRequest,
    CreateJobResponse,
    ExportRequest,
    ExportResponse,
    JobCommandResponse,
    PriorityRequest,
    PriorityResponse,
)
from .submission import prefer_wait_s, submit_job

_log = logging.getLogger(__name__)


def finished_export(summary: JobSummary, checkpoint: str | None) -> Export | None:
    """The succeeded export that made a repeated request a no-op (the domain's matching)."""
    latest = summary.last_checkpoint
    target = checkpoint or (latest.path if latest is not None else None)
    for export in reversed(summary.exports):
        name = export.checkpoint.rstrip("/").rsplit("/", 1)[-1]
        if export.status == "succeeded" and target in (export.checkpoint, name):
            return export
    return None


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


class JobsController(Controller):
    path = "/jobs"
    tags = ("jobs",)

    @post(
        "/",
        status_code=201,
        summary="Create a training job",
        description=(
            "Queued jobs start by themselves when GPUs matching them free up "
            "(`auto_start: false` holds the job until started). The answer comes from the "
            "recorded command, so `status` is `queued` or `held` (or `scheduled`/`running` "
            "when free GPUs took it at once). A queued job's answer carries its "
            "`queue_position` and `estimated_wait_time`: the API waits up to 1 second for "
            "the scheduler's rank (`Prefer: wait=N` changes that, `wait=0` answers at once)."
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
