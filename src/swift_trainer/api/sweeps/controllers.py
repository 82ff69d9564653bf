"""The sweep routes: create a sweep, list and read sweeps, stop or cancel one, its CSV."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import JSONBody, Parameter

from ...core.commands import CreateSweep, StopSweep
from ...core.ids import new_id
from ...core.sweep import SweepNotFound, SweepState, plan_trials
from ...projections.experiments.experiments_service import ExperimentsService
from ...projections.experiments.sweep_driver import stop_action
from ..auth.principal import principal
from ..decoding import strict_body
from ..deps import ApiDeps, Deps
from ..dispatch import idempotent_command_id, send
from ..jobs.params import IdempotencyKey
from ..problems import ApiProblem, problems
from .schemas import CreateSweepRequest, SweepCommandResponse, SweepListResponse, SweepView
from .sweep_views import results_csv, sweep_status, sweep_view, trial_views

SweepIdPath = Annotated[str, Parameter(description="The sweep's id.", max_length=48)]
#: How long a write waits for this process's sweep view to show it.
VIEW_WAIT_S = 2.0


def _experiments(deps: ApiDeps) -> ExperimentsService:
    if deps.experiments is None:
        raise ApiProblem("not_ready", "this API process has no view of the sweeps")
    return deps.experiments


def _visible(state: SweepState | None) -> bool:
    if state is None or state.spec is None:
        return False
    return principal().may_see(state.spec.base.owner)


def _sweep(deps: ApiDeps, sweep_id: str) -> SweepState:
    state = _experiments(deps).sweeps.sweeps.get(sweep_id)
    if not _visible(state):
        raise SweepNotFound(f"sweep {sweep_id!r} does not exist")
    assert state is not None
    return state


async def _view(deps: ApiDeps, state: SweepState, *, detailed: bool) -> SweepView:
    driver = _experiments(deps).sweeps
    return sweep_view(state, await trial_views(driver, state, deps.read_model), detailed=detailed)


class SweepsController(Controller):
    path = "/sweeps"
    tags = ("sweeps",)

    @post(
        "/",
        status_code=201,
        summary="Create a sweep",
        description=(
            "Expands `parameters` into trials (a grid, or `count` seeded random samples; at "
            "most 256) and runs each as an ordinary job labelled `sweep=<id>`, at most "
            "`max_parallel` queued or running at once. `early_stop: {type: median}` stops a "
            "trial whose metric is worse than the median of the others at the same step."
        ),
        responses=problems(409, 422, 503),
    )
    async def create_sweep(
        self,
        *,
        deps: Deps,
        request: Request[Any, Any, Any],
        data: JSONBody[CreateSweepRequest],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[SweepView]:
        body = await strict_body(request, CreateSweepRequest)
        experiments = _experiments(deps)
        sweep_id = body.sweep_id or "sweep-" + new_id()[-10:]
        spec = body.to_spec()
        spec = msgspec.structs.replace(
            spec, base=msgspec.structs.replace(spec.base, owner=principal().owner)
        )
        command_id = idempotent_command_id(idempotency_key, f"sweep:{sweep_id}")
        reply = await send(deps, CreateSweep(sweep_id=sweep_id, spec=spec), command_id=command_id)
        if reply.events:
            await experiments.wait_applied(reply.events[-1].position, VIEW_WAIT_S)
        state = experiments.sweeps.sweeps.get(sweep_id)
        if state is None:  # the view lags: answer with what was recorded
            plans = plan_trials(sweep_id, spec)
            state = SweepState(sweep_id=sweep_id, spec=spec, trials=plans)
        location = f"{request.url.path.rstrip('/')}/{sweep_id}"
        view = await _view(deps, state, detailed=True)
        return Response(view, status_code=201, headers={"Location": location})

    @get("/", summary="List sweeps", responses=problems(503))
    async def list_sweeps(self, deps: Deps) -> SweepListResponse:
        driver = _experiments(deps).sweeps
        states = [s for s in driver.sweeps.values() if _visible(s)]
        views = [await _view(deps, state, detailed=False) for state in states]
        views.sort(key=lambda v: (v.created_at is None, v.created_at), reverse=True)
        return SweepListResponse(sweeps=views)

    @get(
        "/{sweep_id:str}",
        summary="A sweep: its trials, counts, % done and best trial",
        responses=problems(404, 503),
    )
    async def get_sweep(self, deps: Deps, sweep_id: SweepIdPath) -> SweepView:
        return await _view(deps, _sweep(deps, sweep_id), detailed=True)

    @get(
        "/{sweep_id:str}/results.csv",
        summary="A sweep's trials as CSV",
        media_type="text/csv",
        responses=problems(404, 503),
    )
    async def sweep_csv(self, deps: Deps, sweep_id: SweepIdPath) -> Response[str]:
        state = _sweep(deps, sweep_id)
        trials = await trial_views(_experiments(deps).sweeps, state, deps.read_model)
        return Response(
            results_csv(trials),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{sweep_id}.csv"'},
        )

    @post(
        "/{sweep_id:str}/stop",
        status_code=200,
        summary="Stop every trial of a sweep",
        description="No trial begins any more; every trial under way stops with a checkpoint.",
        responses=problems(404, 503),
    )
    async def stop_sweep(
        self, deps: Deps, sweep_id: SweepIdPath, idempotency_key: IdempotencyKey = None
    ) -> SweepCommandResponse:
        return await _stop(deps, sweep_id, "stop", idempotency_key)

    @post(
        "/{sweep_id:str}/cancel",
        status_code=200,
        summary="Cancel every trial of a sweep",
        description="No trial begins any more; every unfinished trial is cancelled.",
        responses=problems(404, 503),
    )
    async def cancel_sweep(
        self, deps: Deps, sweep_id: SweepIdPath, idempotency_key: IdempotencyKey = None
    ) -> SweepCommandResponse:
        return await _stop(deps, sweep_id, "cancel", idempotency_key)


async def _stop(
    deps: ApiDeps, sweep_id: str, intent: str, idempotency_key: str | None
) -> SweepCommandResponse:
    """Record the sweep's stop, then signal every trial under way at once.

    The process manager sends the same commands under the same ids, so a trial this
    request misses (begun meanwhile) is still stopped, and none is signalled twice.
    """
    experiments = _experiments(deps)
    state = _sweep(deps, sweep_id)
    # The trials this request stops: those under way now. The process manager may stop
    # them first (it reacts to the same event); either way they are signalled once.
    under_way = [index for index, record in state.begun.items() if record.outcome is None]
    reason = "cancelled by user" if intent == "cancel" else "stopped by user"
    command = StopSweep(sweep_id=sweep_id, intent="cancel" if intent == "cancel" else "stop")
    command = msgspec.structs.replace(command, reason=reason)
    command_id = idempotent_command_id(idempotency_key, f"sweep-{intent}:{sweep_id}")
    reply = await send(deps, command, command_id=command_id)
    if reply.events:
        await experiments.wait_applied(reply.events[-1].position, VIEW_WAIT_S)
    state = _sweep(deps, sweep_id)
    driver = experiments.sweeps
    actions = [
        stop_action(sweep_id, plan.job_id, state.stopped or intent, state.stop_reason)
        for index, record in state.begun.items()
        if record.outcome is None
        and (plan := state.trials[index]).job_id in driver.trials
        and driver.trials[plan.job_id].submitted
        and driver.trials[plan.job_id].outcome is None
    ]
    results = await asyncio.gather(
        *(deps.commands.send(a.command, command_id=a.command_id) for a in actions),
        return_exceptions=True,
    )
    sent = sum(1 for r in results if not isinstance(r, BaseException) and r.ok)
    signalled = max(sent, len(under_way))
    return SweepCommandResponse(
        sweep_id=sweep_id,
        status=sweep_status(state),
        message=f"sweep {sweep_id}: {intent} requested for {signalled} trials under way",
        trials_signalled=signalled,
    )
