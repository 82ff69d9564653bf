"""Where a job stands in the queue: the scheduler's word when it has one, a fallback if not.

The scheduler publishes its queue (order and estimated starts, from simulating placement
over running jobs' remaining time) into the read model. A job it has not listed yet, or a
deployment without a scheduler, still gets a position: queued jobs by the seed's rule,
higher priority first and FIFO by submission within a priority. Such a position has no
estimate, and says where it came from (``source``), so nobody mistakes it for a forecast.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

import msgspec

from ...core.job import JobStatus
from ...projections.read_models.interface import MAX_PAGE_SIZE, ReadModel
from ...projections.read_models.views import JobSummary, QueueView

#: The fallback order reads at most this many queued jobs.
MAX_SCAN: Final = 10_000

PlaceSource = Literal["scheduler", "scheduler_pending", "submission_order"]


class QueuePlace(msgspec.Struct, frozen=True):
    position: int
    source: PlaceSource
    estimated_start: datetime | None = None
    estimated_wait_s: float | None = None


def wait_until(start: datetime | None, now: datetime) -> float | None:
    if start is None:
        return None
    return max((start - now).total_seconds(), 0.0)


async def queued_in_order(read_model: ReadModel, limit: int = MAX_SCAN) -> list[JobSummary]:
    """Queued jobs as the seed orders them: priority descending, then submission order."""
    found: list[JobSummary] = []
    cursor: str | None = None
    while len(found) < limit:
        page = await read_model.list_jobs(
            status=JobStatus.QUEUED,
            cursor=cursor,
            limit=min(MAX_PAGE_SIZE, limit - len(found)),
        )
        found.extend(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    found.sort(key=lambda job: (-job.priority, job.submitted_position))
    return found


async def place_in_queue(
    read_model: ReadModel,
    job_id: str,
    priority: int,
    now: datetime,
    view: QueueView | None = None,
) -> QueuePlace:
    view = view if view is not None else await read_model.queue_view()
    entry = view.entry(job_id)
    if entry is not None:
        return QueuePlace(
            position=entry.position,
            source="scheduler",
            estimated_start=entry.estimated_start,
            estimated_wait_s=wait_until(entry.estimated_start, now),
        )
    if view.computed_at is not None:
        # Not listed yet: it goes behind every listed job of the same or higher priority.
        ahead = sum(1 for x in view.entries if x.priority >= priority and x.job_id != job_id)
        return QueuePlace(position=ahead + 1, source="scheduler_pending")
    order = await queued_in_order(read_model)
    for index, job in enumerate(order):
        if job.job_id == job_id:
            return QueuePlace(position=index + 1, source="submission_order")
    ahead = sum(1 for job in order if job.priority >= priority)
    return QueuePlace(position=ahead + 1, source="submission_order")
