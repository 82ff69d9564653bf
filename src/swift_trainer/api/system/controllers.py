"""GPU information, system status and health: what operators and orchestrators poll."""

from __future__ import annotations

import asyncio

from litestar import Controller, get

from ...core.job import JobStatus
from ..auth.principal import principal
from ..deps import Deps, combine_checks, read_model_check
from ..problems import ApiProblem, problems
from ..queue.controllers import processor_status
from .resources import gpus_overview, host_stats, with_drains
from .schemas import GpusResponse, Health, Readiness, SystemStatus


class SystemController(Controller):
    path = "/"
    tags = ("system",)

    @get("/gpus", summary="GPU information", responses=problems(503))
    async def gpus(self, deps: Deps) -> GpusResponse:
        caller = principal()
        overview = await gpus_overview(
            deps.read_model, deps.clock(), deps.runner_lease_s, caller.may_see
        )
        return with_drains(overview, (await deps.read_model.queue_view()).fleet)

    @get("/system/status", summary="System status", responses=problems(503))
    async def system_status(self, deps: Deps) -> SystemStatus:
        read_model = deps.read_model
        host = await asyncio.to_thread(host_stats, deps.output_root)
        counts = await read_model.count_by_status()
        gpus = await gpus_overview(read_model, deps.clock(), deps.runner_lease_s)
        return SystemStatus(
            host=host,
            jobs={status.value: counts.get(status, 0) for status in _SHOWN},
            queue_length=counts.get(JobStatus.QUEUED, 0),
            processor=processor_status(await read_model.processor_state()),
            runners_known=len(gpus.runners),
            runners_alive=sum(1 for runner in gpus.runners if runner.alive),
            gpus_total=gpus.total,
            gpus_free=gpus.free,
            read_model_position=await read_model.applied_position(),
            checked_at=deps.clock(),
        )

    @get("/health", summary="Liveness", description="200 while the process serves requests.")
    async def health(self) -> Health:
        return Health()

    @get(
        "/health/ready",
        summary="Readiness",
        description="200 when NATS, the event store and the read model answer; else 503.",
        responses=problems(503),
    )
    async def ready(self, deps: Deps) -> Readiness:
        readiness = deps.readiness or combine_checks(read_model=read_model_check(deps.read_model))
        try:
            checks = await asyncio.wait_for(readiness(), deps.readiness_timeout_s)
        except TimeoutError:
            checks = {"readiness": f"checks took longer than {deps.readiness_timeout_s:g}s"}
        failed = {name: value for name, value in checks.items() if value is not True}
        if failed:
            raise ApiProblem(
                "not_ready",
                "not ready: "
                + "; ".join(f"{name}: {value or 'down'}" for name, value in failed.items()),
                checks=checks,
            )
        return Readiness(checks=checks)


_SHOWN = tuple(s for s in JobStatus if s not in (JobStatus.NEW, JobStatus.DELETED))
