"""Listing jobs by label: a bounded scan over the status/priority/owner index, page by page.

The read models index jobs by status, priority and owner only; labels are free-form, so an
index per label would grow without bound. Instead one request reads at most ``MAX_SCANNED``
jobs from the cursor on (in growing reads) and returns the matches it found, with a cursor
to go on from. A request therefore costs the same with 100k jobs as with 100, and a rare
label yields short (even empty) pages with a ``next_cursor``: follow it until it is null.
"""

from __future__ import annotations

from typing import Final

from ...core.errors import SwiftTrainerError
from ...core.job import JobStatus
from ...projections.read_models.interface import MAX_PAGE_SIZE, ReadModel
from ...projections.read_models.projection import encode_cursor
from ...projections.read_models.views import JobSummary
from .schemas import JobListResponse

#: The most jobs one label-filtered request reads from the read model.
MAX_SCANNED: Final = 5 * MAX_PAGE_SIZE


class InvalidLabelFilter(SwiftTrainerError):
    code = "validation_error"


def parse_label(text: str) -> tuple[str, str]:
    """``key=value`` (value may be empty); a missing ``=`` or key is a 422."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise InvalidLabelFilter(f"label filter {text!r} must be key=value, e.g. team=nlp")
    return key.strip(), value.strip()


def has_label(job: JobSummary, key: str, value: str) -> bool:
    return job.labels.get(key) == value


async def list_by_label(
    read_model: ReadModel,
    label: tuple[str, str],
    *,
    status: JobStatus | None,
    priority: int | None,
    cursor: str | None,
    limit: int,
    owner: str | None = None,
) -> JobListResponse:
    """Up to ``limit`` matching jobs, newest first, reading at most ``MAX_SCANNED`` jobs."""
    key, value = label
    found: list[JobSummary] = []
    scanned = 0
    # Small reads first (a common label fills a page at once), doubling for a rare one.
    size = min(MAX_PAGE_SIZE, max(2 * limit, 50))
    while True:
        page = await read_model.list_jobs(
            status=status, priority=priority, cursor=cursor, limit=size, owner=owner
        )
        size = min(MAX_PAGE_SIZE, 2 * size)
        for index, job in enumerate(page.items):
            if has_label(job, key, value):
                found.append(job)
                if len(found) == limit:
                    more = index < len(page.items) - 1 or page.next_cursor is not None
                    next_cursor = encode_cursor(job.submitted_position) if more else None
                    return JobListResponse(items=found, next_cursor=next_cursor)
        scanned += len(page.items)
        cursor = page.next_cursor
        if cursor is None or scanned >= MAX_SCANNED:
            return JobListResponse(items=found, next_cursor=cursor)
