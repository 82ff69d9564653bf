"""Request parameters the job endpoints share, and the lookup every job route starts with."""

from __future__ import annotations

from typing import Annotated

from litestar.params import HeaderParameter, PathParameter, QueryParameter

from ...core.commands import NAME_PATTERN
from ...core.errors import JobNotFound
from ...core.ids import JOB_ID_PATTERN
from ...projections.read_models.views import JobSummary
from ..deps import ApiDeps

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
            "`wait=N` (RFC 7240, N up to 5 seconds): how long a queued job's answer waits at "
            "most for the scheduler's rank (its queue position and estimated wait, or the job "
            "placed at once). Without it the answer waits up to 1 second; `wait=0` answers at "
            "once, possibly with `queue_source: scheduler_pending` and no position."
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


async def load_job(deps: ApiDeps, job_id: str) -> JobSummary:
    summary = await deps.read_model.get_job(job_id)
    if summary is None:
        raise JobNotFound(f"job {job_id!r} does not exist")
    return summary
