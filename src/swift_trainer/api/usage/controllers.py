"""``GET /usage``: GPU-hours used and lost, queue waits and final statuses per group.

A ``user`` key gets rows of its own owner's jobs only; admin and viewer keys see every
owner's, as they see every job. The figures come from the usage fold of the event store
(``core/usage.py``), caught up on each request.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Final

import msgspec
from litestar import Controller, get
from litestar.params import QueryParameter

from ...core.usage import UsageRow, check_group_by, usage_report
from ..auth.principal import principal
from ..deps import Deps
from ..problems import ApiProblem, problems

#: The window when ``from`` is not given: the week before ``to``.
DEFAULT_WINDOW: Final = timedelta(days=7)


class UsageReport(msgspec.Struct, frozen=True, kw_only=True):
    """Figures per group for the window ``[from, to)``."""

    group_by: str
    start: datetime = msgspec.field(name="from")
    end: datetime = msgspec.field(name="to")
    rows: list[UsageRow]
    #: GPU-hours while running with utilisation under 5%: null, because runners report
    #: only their latest utilisation (heartbeats), not its history.
    idle_gpu_hours: float | None = None


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UsageController(Controller):
    path = "/usage"
    tags = ("usage",)

    @get(
        "/",
        summary="GPU-hours per owner, label or day",
        description=(
            "GPU-hours used (GPUs x running time of each attempt), GPU-hours lost (failed, "
            "lost and preempted attempts since their last checkpoint), queue wait (mean and "
            "p95) and jobs by final status, per group, for `[from, to)` (default: the last "
            "7 days). A `user` key sees its own jobs only."
        ),
        responses=problems(422, 503),
    )
    async def usage(
        self,
        deps: Deps,
        group_by: Annotated[
            str,
            QueryParameter(description="`owner`, `day` (UTC) or `label:KEY`", max_length=80),
        ] = "owner",
        start: Annotated[
            datetime | None, QueryParameter(name="from", description="window start (ISO 8601)")
        ] = None,
        end: Annotated[
            datetime | None,
            QueryParameter(name="to", description="window end (ISO 8601; default now)"),
        ] = None,
    ) -> UsageReport:
        problem = check_group_by(group_by)
        if problem is not None:
            raise ApiProblem("validation_error", problem)
        if deps.usage is None:
            raise ApiProblem(
                "command_unavailable", "usage needs the event store: this API process has none"
            )
        now = _utc(deps.clock())
        to = min(_utc(end), now) if end is not None else now
        since = _utc(start) if start is not None else to - DEFAULT_WINDOW
        if since >= to:
            raise ApiProblem("validation_error", f"from ({since}) must be before to ({to})")
        caller = principal()
        rows: list[UsageRow] = []
        if caller.sees_everything() or caller.owner is not None:
            ledger = await deps.usage.ledger()
            owner = None if caller.sees_everything() else caller.owner
            rows = usage_report(ledger, group_by=group_by, start=since, end=to, owner=owner)
        return UsageReport(group_by=group_by, start=since, end=to, rows=rows)
