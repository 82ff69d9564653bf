"""The experiments process manager on a real bus: dependency release and sweeps.

Real nats-server, SQLite store, command handler and relay (the ``bus`` fixture); job
outcomes are driven with the same commands a scheduler and a runner send.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from tests.projections.conftest import Bus, eventually

from swift_trainer.bus.connection import connect
from swift_trainer.core import commands as c
from swift_trainer.core.spec import JobSpec
from swift_trainer.core.sweep_space import Parameter, SweepSpec
from swift_trainer.projections.experiments.experiments_service import ExperimentsService


class Experiments:
    """Starts process managers on their own connections, as separate processes would."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.running: list[ExperimentsService] = []

    async def start(self, *, from_store: bool = True) -> ExperimentsService:
        nc = await connect(self.bus.url, name="experiments-under-test")
        self.bus.connections.append(nc)
        service = ExperimentsService(nc, store=self.bus.store if from_store else None, retry_s=0.3)
        await service.start()
        await service.wait_ready()
        self.running.append(service)
        return service

    async def stop(self, service: ExperimentsService) -> None:
        await service.stop()
        self.running.remove(service)


@pytest.fixture
async def experiments(bus: Bus) -> AsyncIterator[Experiments]:
    started = Experiments(bus)
    try:
        yield started
    finally:
        for service in list(started.running):
            await service.stop()


async def succeed(bus: Bus, job_id: str, *, loss: float | None = None) -> None:
    """Drive a queued job to success with the scheduler's and a runner's commands."""
    for command in (
        c.ScheduleJob(job_id=job_id, attempt=1, runner_id="r1", gpu_ids=(0,)),
        c.ReportStarted(job_id=job_id, attempt=1, runner_id="r1", pid=1, command=("swift",)),
        *(
            [c.ReportProgress(job_id=job_id, attempt=1, runner_id="r1", step=10, loss=loss)]
            if loss is not None
            else []
        ),
        c.ReportSucceeded(job_id=job_id, attempt=1, runner_id="r1", final_step=10),
    ):
        reply = await bus.send(command)
        assert reply.ok, reply


async def fail(bus: Bus, job_id: str) -> None:
    for command in (
        c.ScheduleJob(job_id=job_id, attempt=1, runner_id="r1", gpu_ids=(0,)),
        c.ReportStarted(job_id=job_id, attempt=1, runner_id="r1", pid=1, command=("swift",)),
        c.ReportFailed(job_id=job_id, attempt=1, runner_id="r1", exit_code=1, reason="oom"),
    ):
        assert (await bus.send(command)).ok


async def test_b_after_a_queues_only_once_a_succeeds(bus: Bus, experiments: Experiments) -> None:
    await experiments.start()
    await bus.submit("a")
    await bus.submit("b", after=[{"job": "a", "on": "succeeded"}])
    await bus.submit("c", after=[{"job": "a", "on": "ended"}, {"job": "b", "on": "ended"}])
    assert await bus.status("b") == "waiting"
    await succeed(bus, "a")
    await eventually(lambda: _is(bus, "b", "queued"), what="b queued after a succeeded")
    assert await bus.status("c") == "waiting"  # it also waits for b
    assert (await bus.send(c.CancelJob(job_id="b"))).ok
    await eventually(lambda: _is(bus, "c", "queued"), what="c queued once a and b ended")


async def test_a_condition_that_can_no_longer_hold_cancels_with_the_reason(
    bus: Bus, experiments: Experiments
) -> None:
    await experiments.start()
    await bus.submit("a")
    await bus.submit("b", after=[{"job": "a", "on": "succeeded"}])
    await bus.submit("fix", after=[{"job": "a", "on": "failed"}])
    await fail(bus, "a")
    await eventually(lambda: _is(bus, "b", "cancelled"), what="b cancelled")
    await eventually(lambda: _is(bus, "fix", "queued"), what="fix queued after a failed")
    state = (await bus.jobs())["b"]
    assert state.stop_reason == "job a failed; this job waited for it to succeed"


@pytest.mark.parametrize("from_store", [True, False], ids=["store", "jetstream"])
async def test_the_wait_survives_a_restart_of_the_releaser(
    bus: Bus, experiments: Experiments, from_store: bool
) -> None:
    """B waits while no releaser runs; A succeeds meanwhile; a fresh one releases B."""
    first = await experiments.start(from_store=from_store)
    await bus.submit("a")
    await bus.submit("b", after=[{"job": "a"}])
    await eventually(lambda: "b" in first.dependencies.waiting, what="b seen waiting")
    await experiments.stop(first)
    await succeed(bus, "a")
    assert await bus.status("b") == "waiting"
    await experiments.start(from_store=from_store)
    await eventually(lambda: _is(bus, "b", "queued"), what="b released after the restart")
    # Two releasers at once send the same command id: B is queued once.
    await experiments.start(from_store=from_store)
    queued = [r for r in await bus.events() if r.stream_id == "job-b" and r.type == "JobQueued"]
    assert len(queued) == 1


def sweep(count: int, max_parallel: int) -> SweepSpec:
    return SweepSpec(
        name="lr",
        base=JobSpec(data_path="d#10", model_path="m", output_dir="out/lr"),
        parameters={
            "train_args.learning_rate": Parameter(
                values=tuple(1e-5 * (i + 1) for i in range(count))
            )
        },
        max_parallel=max_parallel,
    )


async def _jobs_of(bus: Bus, sweep_id: str) -> dict[str, str]:
    return {
        job_id: state.status.value
        for job_id, state in (await bus.jobs()).items()
        if state.spec is not None and state.spec.labels.get("sweep") == sweep_id
    }


async def test_a_sweep_keeps_at_most_max_parallel_trials_under_way(
    bus: Bus, experiments: Experiments
) -> None:
    service = await experiments.start()
    assert (await bus.send(c.CreateSweep(sweep_id="s1", spec=sweep(5, 2)))).ok
    await eventually(lambda: _count(bus, "s1", 2), what="two trials submitted")
    jobs = await _jobs_of(bus, "s1")
    assert sorted(jobs) == ["s1-t0", "s1-t1"]
    await succeed(bus, "s1-t0", loss=0.7)
    await eventually(lambda: _count(bus, "s1", 3), what="a third trial after one ended")
    await succeed(bus, "s1-t1", loss=0.2)
    await eventually(lambda: _count(bus, "s1", 4), what="a fourth trial")
    for job_id in ("s1-t2", "s1-t3"):
        await succeed(bus, job_id, loss=0.5)
    await eventually(lambda: _count(bus, "s1", 5), what="the last trial")
    await succeed(bus, "s1-t4", loss=0.9)
    await eventually(lambda: service.sweeps.sweeps["s1"].finished, what="the sweep finished")
    assert service.sweeps.sweeps["s1"].best_index == 1
    # At no point of the log were more than two trials submitted and not yet ended.
    live, worst = set(), 0
    for recorded in await bus.events():
        if recorded.stream_id.startswith("job-s1-"):
            if recorded.type == "JobSubmitted":
                live.add(recorded.stream_id)
            elif recorded.type == "JobSucceeded":
                live.discard(recorded.stream_id)
            worst = max(worst, len(live))
    assert worst == 2


@pytest.mark.parametrize(("intent", "status"), [("cancel", "cancelled"), ("stop", "stopped")])
async def test_stop_or_cancel_of_a_sweep_of_256_trials_ends_every_trial_at_once(
    bus: Bus, experiments: Experiments, intent: str, status: str
) -> None:
    service = await experiments.start()
    big = sweep(256, 256)
    assert (await bus.send(c.CreateSweep(sweep_id="big", spec=big))).ok
    await eventually(lambda: _count(bus, "big", 256), timeout=60, what="256 trials submitted")
    started = time.perf_counter()
    assert (await bus.send(c.StopSweep(sweep_id="big", intent=intent))).ok  # type: ignore[arg-type]
    await eventually(
        lambda: service.sweeps.sweeps["big"].finished, timeout=60, what=f"every trial {status}"
    )
    print(f"{intent} of 256 trials: {time.perf_counter() - started:.2f} s")
    statuses = set((await _jobs_of(bus, "big")).values())
    assert statuses == {status}


async def _is(bus: Bus, job_id: str, status: str) -> bool:
    return await bus.status(job_id) == status


async def _count(bus: Bus, sweep_id: str, n: int) -> bool:
    return len(await _jobs_of(bus, sweep_id)) == n
