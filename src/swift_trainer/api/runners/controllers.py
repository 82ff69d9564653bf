"""Runners for admins: list them with drains and GPU health, drain and undrain them.

A drain is an event of the fleet (who, when, why are in the audit trail); the scheduler
places nothing new on a drained runner and, for ``now``, requeues its running jobs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.params import JSONBody, PathParameter

from ...core.commands import DrainRunner, UndrainRunner
from ...core.inventory import decode_heartbeat
from ...projections.read_models.views import FleetView, RunnerSnapshot
from ..deps import Deps
from ..dispatch import send
from ..problems import problems
from .schemas import (
    DrainRequest,
    DrainResponse,
    RunnerGpuHealth,
    RunnersResponse,
    RunnerStatus,
    UndrainRequest,
)

RunnerIdPath = Annotated[
    str, PathParameter(pattern=r"^[A-Za-z0-9_-]{1,128}$", description="The runner's id.")
]


def runner_statuses(
    snapshots: list[RunnerSnapshot], fleet: FleetView, now: datetime, lease_s: float
) -> list[RunnerStatus]:
    """Each runner known by its heartbeat or its drain, with its GPUs' health."""
    drains = {d.runner_id: d for d in fleet.drained}
    unhealthy = {g.uuid: g for g in fleet.unhealthy_gpus}
    found: dict[str, RunnerStatus] = {}
    for snap in snapshots:
        gpus: list[RunnerGpuHealth] = []
        try:
            beat = decode_heartbeat(snap.data)
        except msgspec.DecodeError:
            beat = None
        for gpu in beat.inventory.gpus if beat is not None else ():
            record = unhealthy.get(gpu.uuid)
            reasons = gpu.health.problems or (record.reasons if record else ())
            gpus.append(
                RunnerGpuHealth(
                    index=gpu.index,
                    uuid=gpu.uuid,
                    name=gpu.name,
                    healthy=not reasons,
                    reasons=reasons,
                    unhealthy_since=record.since if record else None,
                )
            )
        drain = drains.get(snap.runner_id)
        found[snap.runner_id] = RunnerStatus(
            runner_id=snap.runner_id,
            alive=(now - snap.seen_at).total_seconds() <= lease_s,
            seen_at=snap.seen_at,
            drained=drain is not None,
            drain_reason=drain.reason if drain else None,
            drained_at=drain.at if drain else None,
            drain_stops_jobs=drain.stop_jobs if drain else False,
            gpus=gpus,
        )
    for runner_id, drain in drains.items():
        if runner_id not in found:
            found[runner_id] = RunnerStatus(
                runner_id=runner_id,
                alive=False,
                drained=True,
                drain_reason=drain.reason,
                drained_at=drain.at,
                drain_stops_jobs=drain.stop_jobs,
            )
    return [found[k] for k in sorted(found)]


class RunnersController(Controller):
    path = "/runners"
    tags = ["runners"]  # noqa: RUF012 - Litestar's declared class attribute

    @get("/", summary="Runners, their drains and their GPUs' health", responses=problems(503))
    async def list_runners(self, deps: Deps) -> RunnersResponse:
        view = await deps.read_model.queue_view()
        snapshots = list(await deps.read_model.runner_snapshots())
        runners = runner_statuses(snapshots, view.fleet, deps.clock(), deps.runner_lease_s)
        return RunnersResponse(runners=runners)

    @post(
        "/{runner_id:str}/drain",
        status_code=200,
        summary="Drain a runner",
        description=(
            "The runner gets no new jobs and finishes the ones it runs; with `now` its jobs "
            "are stopped with a checkpoint and queued again on other GPUs."
        ),
        responses=problems(422, 503),
    )
    async def drain(
        self, deps: Deps, runner_id: RunnerIdPath, data: JSONBody[DrainRequest]
    ) -> DrainResponse:
        command = DrainRunner(runner_id=runner_id, reason=data.reason, stop_jobs=data.now)
        reply = await send(deps, command)
        changed = bool(reply.events)
        what = " and its jobs requeued" if data.now else ""
        message = f"runner {runner_id} drained{what}: {data.reason}"
        return DrainResponse(
            runner_id=runner_id,
            drained=True,
            changed=changed,
            message=message if changed else f"runner {runner_id} is drained already",
        )

    @post(
        "/{runner_id:str}/undrain",
        status_code=200,
        summary="Undrain a runner",
        description="The runner takes new jobs again.",
        responses=problems(422, 503),
    )
    async def undrain(
        self, deps: Deps, runner_id: RunnerIdPath, data: JSONBody[UndrainRequest | None] = None
    ) -> DrainResponse:
        reason = data.reason if data is not None else "undrained"
        reply = await send(deps, UndrainRunner(runner_id=runner_id, reason=reason))
        changed = bool(reply.events)
        return DrainResponse(
            runner_id=runner_id,
            drained=False,
            changed=changed,
            message=f"runner {runner_id} takes new jobs again"
            if changed
            else f"runner {runner_id} was not drained",
        )
