"""Per-owner quotas at submit time: the part of a quota the API can enforce by itself.

``max_queued_jobs`` bounds an owner's waiting jobs (held and queued), so one team cannot
fill the queue. ``max_gpus`` (GPUs in use at once) is recorded for the scheduler, which
does not enforce it yet (see README, Security).
"""

from __future__ import annotations

from typing import Final

from ...core.job import JobStatus
from ...projections.read_models.interface import MAX_PAGE_SIZE
from ..deps import ApiDeps
from ..problems import ApiProblem, FieldProblem

_WAITING: Final = (JobStatus.QUEUED, JobStatus.HELD, JobStatus.WAITING)


async def waiting_jobs(deps: ApiDeps, owner: str, limit: int) -> int:
    """How many of ``owner``'s jobs wait, counting no further than ``limit``."""
    count = 0
    for status in _WAITING:
        cursor = None
        while True:
            page = await deps.read_model.list_jobs(
                status=status, cursor=cursor, limit=MAX_PAGE_SIZE, owner=owner
            )
            count += len(page.items)
            cursor = page.next_cursor
            if count >= limit or cursor is None:
                break
        if count >= limit:
            break
    return count


async def check_queued_quota(deps: ApiDeps, owner: str) -> None:
    if deps.access is None:
        return
    limit = deps.access.quota(owner).max_queued_jobs
    if limit is None:
        return
    if await waiting_jobs(deps, owner, limit) >= limit:
        raise ApiProblem(
            "quota_exceeded",
            f"owner {owner!r} has {limit} waiting jobs, the quota's max_queued_jobs; "
            "wait for one to start or ask an admin to raise the quota",
            status=429,
            headers={"Retry-After": "60"},
            errors=[FieldProblem(key="max_queued_jobs", message=f"limit {limit}", source="quota")],
        )
