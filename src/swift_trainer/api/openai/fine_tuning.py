"""``/v1/fine_tuning/jobs``: the OpenAI fine-tuning API over the native commands and reads.

Every write is the native command (``SubmitJob``, ``PauseJob``, ``ResumeJob``,
``CancelJob``) through the same dispatch as ``/api/v1/training``, and every read is the
same read model, so a job is one job in both APIs. Lists are newest first; ``after`` is
the last id of the previous page and ``has_more`` is exact (one extra item is read to know).
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Annotated, Any, Final

from litestar import Controller, Request, get, post
from litestar.params import HeaderParameter, JSONBody, PathParameter, QueryParameter

from ...core.commands import CancelJob, PauseJob, ResumeJob, SubmitJob
from ...core.ids import JOB_ID_PATTERN
from ...core.job import JobStatus
from ...projections.read_models.interface import MAX_PAGE_SIZE
from ...projections.read_models.projection import encode_cursor
from ...projections.read_models.views import EventLogEntry, JobSummary
from ..auth.principal import principal
from ..decoding import decode_strict
from ..deps import ApiDeps, Deps
from ..dispatch import caught_up, idempotent_command_id, send
from .files import ensure_results_file, owned_file
from .mapping import (
    checkpoint_objects,
    event_object,
    job_object,
    position_of_event,
    spec_for_request,
)
from .openai_errors import OpenAIProblem
from .schemas import (
    CreateFineTuningJob,
    FineTuningJob,
    FineTuningJobCheckpointList,
    FineTuningJobEventList,
    FineTuningJobList,
)

_log = logging.getLogger(__name__)

JobIdPath = Annotated[str, PathParameter(pattern=JOB_ID_PATTERN, max_length=64)]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(name="Idempotency-Key", min_length=1, max_length=255, required=False),
]
#: Results files already written by this process (a cache, never an authority).
_written_results: set[str] = set()
_JOB_PREFIX: Final = "ftjob-"


def new_openai_job_id(idempotency_key: str | None) -> str:
    if idempotency_key is None:
        return _JOB_PREFIX + os.urandom(12).hex()
    return _JOB_PREFIX + hashlib.sha256(b"ftjob\x00" + idempotency_key.encode()).hexdigest()[:24]


def seed_for(job_id: str) -> int:
    """OpenAI picks a seed when none is given; derived from the id, a retry gets the same."""
    return int(hashlib.sha256(job_id.encode()).hexdigest()[:7], 16)


async def read_job(deps: ApiDeps, job_id: str) -> JobSummary:
    summary = await deps.read_model.get_job(job_id)
    if summary is None:
        raise OpenAIProblem("job_not_found", f"no fine-tuning job {job_id!r}", param="id")
    return summary


async def present(deps: ApiDeps, summary: JobSummary) -> FineTuningJob:
    results: list[str] = []
    if summary.status is JobStatus.SUCCEEDED:
        try:
            file_id = await ensure_results_file(
                deps,
                summary.job_id,
                _written_results,
                summary.owner,
                eval_results=summary.eval_results,
                final_step=summary.progress.step if summary.progress else None,
            )
        except Exception:  # the metrics CSV is a convenience: never fail the read for it
            _log.warning("results file for %s not written", summary.job_id, exc_info=True)
            file_id = None
        if file_id is not None:
            results.append(file_id)
    return job_object(summary, results)


async def check_training_file(
    deps: ApiDeps, file_id: str, param: str, *, preference: bool = False
) -> None:
    try:
        record = await owned_file(deps, file_id)
    except OpenAIProblem:
        raise OpenAIProblem("invalid_file", f"no file {file_id!r}", param=param) from None
    if not principal().may_train_on(record.owner):
        raise OpenAIProblem("invalid_file", f"no file {file_id!r}", param=param)
    if record.purpose != "fine-tune":
        raise OpenAIProblem(
            "invalid_file", f"file {file_id} has purpose {record.purpose!r}", param=param
        )
    if record.status != "processed":
        raise OpenAIProblem(
            "invalid_file",
            f"file {file_id} cannot be trained on: {record.status_details or record.status}",
            param=param,
        )
    if preference and record.preference_records < record.records:
        missing = record.records - record.preference_records
        raise OpenAIProblem(
            "invalid_file",
            f"file {file_id} has {missing} of {record.records} records without "
            "'rejected_response' or 'rejected_messages': DPO trains on preference pairs",
            param=param,
        )


def metadata_filter(request: Request[Any, Any, Any]) -> dict[str, str] | None:
    """``metadata[k]=v`` query parameters; ``{}`` for ``metadata=null`` (jobs without any)."""
    wanted: dict[str, str] = {}
    for key, value in request.query_params.items():
        if key.startswith("metadata[") and key.endswith("]"):
            wanted[key[len("metadata[") : -1]] = value
    if not wanted and request.query_params.get("metadata") == "null":
        return {}
    return wanted or None


def matches(summary: JobSummary, wanted: dict[str, str] | None) -> bool:
    if wanted is None:
        return True
    if not wanted:
        return not summary.metadata
    return all(summary.metadata.get(k) == v for k, v in wanted.items())


async def all_job_events(deps: ApiDeps, job_id: str) -> list[EventLogEntry]:
    entries: list[EventLogEntry] = []
    after = 0
    while True:
        page = await deps.read_model.job_events(job_id, after=after, limit=MAX_PAGE_SIZE)
        entries.extend(page)
        if len(page) < MAX_PAGE_SIZE:
            return entries
        after = page[-1].position


class FineTuningJobsController(Controller):
    path = "/fine_tuning/jobs"
    tags = ("openai",)

    @post("/", status_code=200, summary="Create a fine-tuning job")
    async def create(
        self,
        *,
        deps: Deps,
        request: Request[Any, Any, Any],
        data: JSONBody[CreateFineTuningJob],
        idempotency_key: IdempotencyKey = None,
    ) -> FineTuningJob:
        body = decode_strict(await request.body(), CreateFineTuningJob)
        dpo = body.method is not None and body.method.type == "dpo"
        await check_training_file(deps, body.training_file, "training_file", preference=dpo)
        if body.validation_file is not None:
            await check_training_file(deps, body.validation_file, "validation_file", preference=dpo)
        job_id = new_openai_job_id(idempotency_key)
        seed = body.seed if body.seed is not None else seed_for(job_id)
        spec = spec_for_request(body, job_id, seed=seed, auto_export=deps.auto_export)
        command_id = idempotent_command_id(idempotency_key, "openai-create")
        reply = await send(deps, SubmitJob(job_id=job_id, spec=spec), command_id=command_id)
        if reply.events:
            await caught_up(deps, reply.events[-1].position)
        return await present(deps, await read_job(deps, job_id))

    @get("/", summary="List fine-tuning jobs")
    async def list_jobs(
        self,
        *,
        deps: Deps,
        request: Request[Any, Any, Any],
        after: Annotated[str | None, QueryParameter(max_length=64)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE)] = 20,
    ) -> FineTuningJobList:
        wanted = metadata_filter(request)
        cursor = None
        if after is not None:
            previous = await deps.read_model.get_job(after)
            if previous is None:
                raise OpenAIProblem(
                    "validation_error", f"no fine-tuning job {after!r} to list after", param="after"
                )
            cursor = encode_cursor(previous.submitted_position)
        found: list[JobSummary] = []
        caller = principal()
        owner = None if caller.sees_everything() else caller.owner
        while len(found) <= limit:
            size = MAX_PAGE_SIZE if wanted is not None else limit + 1
            if owner is None and not caller.sees_everything():
                break  # a user key without an owner owns nothing
            page = await deps.read_model.list_jobs(cursor=cursor, limit=size, owner=owner)
            found.extend(
                s for s in page.items if matches(s, wanted) and principal().may_see(s.owner)
            )
            cursor = page.next_cursor
            if cursor is None:
                break
        data = [await present(deps, s) for s in found[:limit]]
        return FineTuningJobList(data=data, has_more=len(found) > limit)

    @get("/{job_id:str}", summary="Retrieve a fine-tuning job")
    async def retrieve(self, deps: Deps, job_id: JobIdPath) -> FineTuningJob:
        return await present(deps, await read_job(deps, job_id))

    async def _control(
        self, deps: ApiDeps, command: PauseJob | ResumeJob | CancelJob, scope: str
    ) -> FineTuningJob:
        await read_job(deps, command.job_id)  # 404 in the OpenAI shape before any command
        reply = await send(deps, command)
        if reply.events:
            await caught_up(deps, reply.events[-1].position)
        _log.debug("%s %s: %s", scope, command.job_id, [x.type for x in reply.events])
        return await present(deps, await read_job(deps, command.job_id))

    @post("/{job_id:str}/cancel", status_code=200, summary="Cancel a fine-tuning job (final)")
    async def cancel(self, deps: Deps, job_id: JobIdPath) -> FineTuningJob:
        return await self._control(deps, CancelJob(job_id=job_id), "cancel")

    @post("/{job_id:str}/pause", status_code=200, summary="Pause a job (checkpoint kept)")
    async def pause(self, deps: Deps, job_id: JobIdPath) -> FineTuningJob:
        return await self._control(deps, PauseJob(job_id=job_id), "pause")

    @post("/{job_id:str}/resume", status_code=200, summary="Resume a paused job")
    async def resume(self, deps: Deps, job_id: JobIdPath) -> FineTuningJob:
        return await self._control(deps, ResumeJob(job_id=job_id), "resume")

    @get("/{job_id:str}/events", summary="A job's events, newest first")
    async def events(
        self,
        *,
        deps: Deps,
        job_id: JobIdPath,
        after: Annotated[str | None, QueryParameter(max_length=40)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE)] = 20,
    ) -> FineTuningJobEventList:
        await read_job(deps, job_id)
        entries = list(reversed(await all_job_events(deps, job_id)))
        if after is not None:
            before = position_of_event(after)
            entries = [x for x in entries if x.position < before]
        page = entries[: limit + 1]
        return FineTuningJobEventList(
            data=[event_object(x) for x in page[:limit]], has_more=len(page) > limit
        )

    @get("/{job_id:str}/checkpoints", summary="A job's checkpoints, newest first")
    async def checkpoints(
        self,
        *,
        deps: Deps,
        job_id: JobIdPath,
        after: Annotated[str | None, QueryParameter(max_length=140)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE)] = 10,
    ) -> FineTuningJobCheckpointList:
        summary = await read_job(deps, job_id)
        items = checkpoint_objects(summary, await deps.read_model.metric_history(job_id))
        if after is not None:
            ids = [x.id for x in items]
            if after not in ids:
                raise OpenAIProblem(
                    "validation_error", f"no checkpoint {after!r} to list after", param="after"
                )
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return FineTuningJobCheckpointList(
            data=page,
            has_more=len(items) > limit,
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
        )
