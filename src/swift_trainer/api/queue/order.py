"""Where a job stands in the queue: the scheduler's word when it has one, a fallback if not.

The scheduler publishes its queue (order and estimated starts, from simulating placement
over running jobs' remaining time) into the read model. Its word is the only position shown
while a scheduler runs: a job it has not ranked yet has *no* position (``scheduler_pending``)
rather than a guess, because a guess is wrong exactly when it matters (free GPUs: the job
starts at once instead of waiting at "position 1"). A job the scheduler has seen
(``as_of_position`` past the job's queueing) but does not list is being placed
(``scheduler_placing``). A deployment without a scheduler still gets positions by the
submission rule, higher priority first and FIFO by submission within a priority, labelled
``submission_order``, with no estimate.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Final, Literal

import msgspec

from ...core.job import JobStatus
from ...projections.read_models.interface import MAX_PAGE_SIZE, ReadModel
from ...projections.read_models.views import JobSummary, QueueView

#: The fallback order reads at most this many queued jobs.
MAX_SCAN: Final = 10_000

PlaceSource = Literal["scheduler", "scheduler_pending", "scheduler_placing", "submission_order"]
#: How often a create that asked to wait (``Prefer: wait=N``) looks at the scheduler's view.
VIEW_POLL_S: Final = 0.02


class QueuePlace(msgspec.Struct, frozen=True):
    #: None while the scheduler has not ranked the job (pending) or is placing it.
    position: int | None
    source: PlaceSource
    estimated_start: datetime | None = None
    estimated_wait_s: float | None = None
    #: Why the scheduler cannot place it now, as its queue view says (see ``QueueEntry``).
    unplaceable: str | None = None
    blocked_by: str | None = None
    blocked_reason: str | None = None


def wait_until(start: datetime | None, now: datetime) -> float | None:
    if start is None:
        return None
    return max((start - now).total_seconds(), 0.0)


async def queued_in_order(read_model: ReadModel, limit: int = MAX_SCAN) -> list[JobSummary]:
    """Queued jobs by priority descending, then submission order."""
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
    *,
    queued_at: int | None = None,
) -> QueuePlace:
    """The job's place as the scheduler gave it, or honestly none yet.

    ``queued_at`` is the event position at which the job was queued (known to a create):
    a view computed past it that does not list the job means the scheduler took it out
    of the queue to place it.
    """
    view = view if view is not None else await read_model.queue_view()
    entry = view.entry(job_id)
    if entry is not None:
        return QueuePlace(
            position=entry.position,
            source="scheduler",
            estimated_start=entry.estimated_start,
            estimated_wait_s=wait_until(entry.estimated_start, now),
            unplaceable=entry.unplaceable,
            blocked_by=entry.blocked_by,
            blocked_reason=entry.blocked_reason,
        )
    if view.computed_at is not None:
        if queued_at is not None and view.as_of_position >= queued_at:
            return QueuePlace(position=None, source="scheduler_placing")
        return QueuePlace(position=None, source="scheduler_pending")
    order = await queued_in_order(read_model)
    for index, job in enumerate(order):
        if job.job_id == job_id:
            return QueuePlace(position=index + 1, source="submission_order")
    ahead = sum(1 for job in order if job.priority >= priority)
    return QueuePlace(position=ahead + 1, source="submission_order")


async def view_past(read_model: ReadModel, position: int, timeout: float) -> QueueView:
    """The scheduler's view, waiting up to ``timeout`` for one computed past ``position``.

    Returns the latest view either way; the caller checks ``as_of_position``. Without a
    scheduler (no view at all) it returns at once: nothing would ever arrive.
    """
    deadline = time.monotonic() + timeout
    while True:
        view = await read_model.queue_view()
        if view.computed_at is None or view.as_of_position >= position:
            return view
        if time.monotonic() >= deadline:
            return view
        await asyncio.sleep(VIEW_POLL_S)


def unranked(view: QueueView, queued: list[JobSummary]) -> list[JobSummary]:
    """Queued jobs (read model order) that the scheduler's view does not list yet."""
    listed = {entry.job_id for entry in view.entries}
    return [job for job in queued if job.job_id not in listed]
