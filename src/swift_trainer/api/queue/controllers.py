"""The queue endpoints: the scheduler's view of waiting jobs, and its on/off switch."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import Controller, delete, get, post
from litestar.params import HeaderParameter, PathParameter

from ...core.commands import PauseQueueProcessor, ResumeQueueProcessor, StopJob
from ...core.errors import InvalidTransition, JobNotFound
from ...core.ids import JOB_ID_PATTERN
from ...core.job import JobStatus
from ...core.queue_processor import QueueProcessorState
from ...projections.read_models.interface import ReadModel
from ..auth.principal import principal
from ..deps import Deps
from ..dispatch import idempotent_command_id, reply_status, send
from ..durations import describe_wait
from ..problems import problems
from .order import place_in_queue, queued_in_order, unranked, wait_until
from .schemas import (
    PendingQueueEntry,
    ProcessorCommandResponse,
    ProcessorStatus,
    ProcessResult,
    QueueEntryResponse,
    QueueJobStatus,
    QueueRemoval,
    QueueResponse,
)

JobIdPath = Annotated[
    str, PathParameter(pattern=JOB_ID_PATTERN, description="The job's id.", max_length=64)
]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(name="Idempotency-Key", min_length=1, max_length=255, required=False),
]


def processor_status(state: QueueProcessorState) -> ProcessorStatus:
    return ProcessorStatus(
        state="paused" if state.paused else "running",
        paused=state.paused,
        reason=state.reason,
        changed_at=state.changed_at,
    )


async def redact_others(
    read_model: ReadModel, entries: list[QueueEntryResponse]
) -> list[QueueEntryResponse]:
    """A user sees other owners' places in the queue (position, priority, GPUs, wait, and
    whether a quota holds the job) but not which jobs they are: no id, and no reason text
    that could name paths or owners."""
    caller = principal()
    if caller.sees_everything():
        return entries
    shown = []
    for entry in entries:
        job = await read_model.get_job(entry.job_id) if entry.job_id else None
        mine = job is not None and caller.may_see(job.owner)
        shown.append(
            entry
            if mine
            else msgspec.structs.replace(entry, job_id=None, unplaceable=None, blocked_reason=None)
        )
    return shown


class QueueController(Controller):
    path = "/queue"
    tags = ("queue",)

    @get("/", summary="GPU queue state", responses=problems(503))
    async def queue(self, deps: Deps) -> QueueResponse:
        read_model = deps.read_model
        view = await read_model.queue_view()
        counts = await read_model.count_by_status()
        pending: list[PendingQueueEntry] = []
        processor = processor_status(await read_model.processor_state())
        now = deps.clock()
        if view.computed_at is not None:
            entries: list[QueueEntryResponse] = []
            for entry in view.entries:
                wait = wait_until(entry.estimated_start, now)
                entries.append(
                    QueueEntryResponse(
                        job_id=entry.job_id,
                        position=entry.position,
                        priority=entry.priority,
                        gpu_count=entry.gpu_count,
                        nodes=entry.nodes,
                        estimated_start=entry.estimated_start,
                        estimated_wait_s=wait,
                        estimated_wait_time=describe_wait(wait),
                        unplaceable=entry.unplaceable,
                        blocked_by=entry.blocked_by,
                        blocked_reason=entry.blocked_reason,
                    )
                )
            source: Literal["scheduler", "submission_order"] = "scheduler"
            if view.as_of_position < await read_model.applied_position():
                # Jobs queued since the view was computed: listed, without a position (a
                # user sees only their own: a pending entry is nothing but an id).
                caller = principal()
                pending = [
                    PendingQueueEntry(job_id=job.job_id, priority=job.priority)
                    for job in unranked(view, await queued_in_order(read_model))
                    if caller.sees_everything() or caller.may_see(job.owner)
                ]
        else:
            entries = [
                QueueEntryResponse(
                    job_id=job.job_id,
                    position=index + 1,
                    priority=job.priority,
                    gpu_count=job.gpu_count,
                    estimated_wait_time=describe_wait(None),
                )
                for index, job in enumerate(await queued_in_order(read_model))
            ]
            source = "submission_order"
        return QueueResponse(
            entries=await redact_others(read_model, entries),
            pending=pending,
            length=counts.get(JobStatus.QUEUED, 0),
            held=counts.get(JobStatus.HELD, 0),
            source=source,
            computed_at=view.computed_at,
            as_of_position=view.as_of_position,
            processor=processor,
        )

    @post(
        "/process",
        status_code=200,
        summary="Process the queue now",
        description="Asks the scheduler for one placement pass now and returns its answer.",
        responses=problems(503),
    )
    async def process(self, deps: Deps) -> ProcessResult:
        return await deps.process_queue()

    @delete(
        "/{job_id:str}",
        status_code=200,
        summary="Remove a job from the queue",
        description="Cancels a queued job (it becomes `stopped`); anything else is a 409.",
        responses=problems(404, 409, 422, 503),
    )
    async def remove(
        self, deps: Deps, job_id: JobIdPath, idempotency_key: IdempotencyKey = None
    ) -> QueueRemoval:
        summary = await deps.read_model.get_job(job_id)
        if summary is None:
            raise JobNotFound(f"job {job_id!r} does not exist")
        if summary.status is not JobStatus.QUEUED:
            raise InvalidTransition(
                f"job {job_id!r} is {summary.status}, not queued: "
                f"use POST .../jobs/{job_id}/stop to stop it",
            )
        command_id = idempotent_command_id(idempotency_key, f"dequeue:{job_id}")
        reply = await send(
            deps, StopJob(job_id=job_id, reason="removed from queue"), command_id=command_id
        )
        status = reply_status(reply)
        return QueueRemoval(
            job_id=job_id,
            status=status,
            message=(
                f"job {job_id} removed from the queue (stopped)"
                if status is JobStatus.STOPPED
                else f"job {job_id} had already left the queue; it is now {status or 'stopping'}"
            ),
        )

    @get(
        "/{job_id:str}/status",
        summary="A job's place in the queue",
        description="`in_queue: false` with the job's status when it is not queued.",
        responses=problems(404, 422, 503),
    )
    async def job_place(self, deps: Deps, job_id: JobIdPath) -> QueueJobStatus:
        summary = await deps.read_model.get_job(job_id)
        if summary is None:
            raise JobNotFound(f"job {job_id!r} does not exist")
        if summary.status is not JobStatus.QUEUED:
            return QueueJobStatus(
                job_id=job_id, status=summary.status, in_queue=False, priority=summary.priority
            )
        place = await place_in_queue(deps.read_model, job_id, summary.priority, deps.clock())
        return QueueJobStatus(
            job_id=job_id,
            status=summary.status,
            in_queue=True,
            priority=summary.priority,
            position=place.position,
            estimated_start=place.estimated_start,
            estimated_wait_s=place.estimated_wait_s,
            estimated_wait_time=describe_wait(place.estimated_wait_s),
            source=place.source,
            unplaceable=place.unplaceable,
            blocked_by=place.blocked_by,
            blocked_reason=place.blocked_reason,
        )

    @post(
        "/processor/start",
        status_code=200,
        summary="Start the queue processor",
        responses=problems(503),
    )
    async def start_processor(
        self, deps: Deps, idempotency_key: IdempotencyKey = None
    ) -> ProcessorCommandResponse:
        command_id = idempotent_command_id(idempotency_key, "processor:start")
        reply = await send(deps, ResumeQueueProcessor(), command_id=command_id)
        changed = bool(reply.events)
        return ProcessorCommandResponse(
            state="running",
            changed=changed,
            message="queue processor resumed" if changed else "queue processor already running",
        )

    @post(
        "/processor/stop",
        status_code=200,
        summary="Stop the queue processor",
        description="Queued jobs stay queued and nothing new is placed until it is started.",
        responses=problems(503),
    )
    async def stop_processor(
        self, deps: Deps, idempotency_key: IdempotencyKey = None
    ) -> ProcessorCommandResponse:
        command_id = idempotent_command_id(idempotency_key, "processor:stop")
        reply = await send(
            deps, PauseQueueProcessor(reason="paused through the API"), command_id=command_id
        )
        changed = bool(reply.events)
        return ProcessorCommandResponse(
            state="paused",
            changed=changed,
            message="queue processor paused" if changed else "queue processor already paused",
        )

    @get(
        "/processor/status",
        summary="Queue processor state",
        responses=problems(503),
    )
    async def processor(self, deps: Deps) -> ProcessorStatus:
        return processor_status(await deps.read_model.processor_state())
