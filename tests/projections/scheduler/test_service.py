"""The scheduler service against a real bus: placement, leadership, runner death, ledger."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tests.projections.conftest import (
    Bus,
    assert_no_gpu_in_two_live_jobs,
    eventually,
    heartbeat,
)

from swift_trainer.bus.messages import CommandReply
from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.inventory import RunnerJob
from swift_trainer.core.telemetry import setup_tracing
from swift_trainer.projections.scheduler.process_requests import (
    PROCESS_SUBJECT,
    request_processing,
)
from swift_trainer.projections.scheduler.service import SchedulerService
from swift_trainer.projections.scheduler.state_checkpoint import (
    SchedulerCheckpoint,
    load_checkpoint,
    save_checkpoint,
)


async def placements(bus: Bus) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {
        job_id: (state.runner_id, state.gpu_ids)
        for job_id, state in (await bus.jobs()).items()
        if state.runner_id is not None
    }


async def wait_placed(
    bus: Bus, count: int, timeout: float = 15.0
) -> dict[str, tuple[str, tuple[int, ...]]]:
    async def enough() -> bool:
        return len(await placements(bus)) >= count

    await eventually(enough, timeout=timeout, what=f"{count} placed jobs")
    return await placements(bus)


async def applied(scheduler: SchedulerService, reply: CommandReply) -> None:
    """Wait until the scheduler has applied the events of a command's reply."""
    position = reply.events[-1].position
    await eventually(lambda: scheduler.state.position >= position, what=f"position {position}")


async def finish(bus: Bus, job_id: str) -> None:
    """Play the runner: start the job and report it succeeded."""
    state = (await bus.jobs())[job_id]
    assert state.runner_id is not None
    runner = {"job_id": job_id, "attempt": state.attempt, "runner_id": state.runner_id}
    assert (await bus.send(c.ReportStarted(**runner, pid=1, command=("swift",)))).ok
    assert (await bus.send(c.ReportSucceeded(**runner))).ok


async def test_queued_jobs_are_placed_in_priority_order_when_gpus_appear(bus: Bus) -> None:
    scheduler = await bus.scheduler()
    await bus.submit("low", priority=1)
    await bus.submit("high", priority=9)
    await bus.submit("mid", priority=5)
    last = await bus.submit("mid-later", priority=5)
    await eventually(lambda: scheduler.leading, what="leadership")
    await applied(scheduler, last)
    result = await scheduler.process_now()
    assert (result.processed, result.placed, result.queued) == (True, (), 4)
    assert await placements(bus) == {}, "nothing to place on before a runner reports"

    await bus.put_heartbeat(heartbeat("r1", gpus=2))
    placed = await wait_placed(bus, 2)
    assert set(placed) == {"high", "mid"}
    assert sorted(gpu for _, gpus in placed.values() for gpu in gpus) == [0, 1]

    await finish(bus, "high")
    placed = await wait_placed(bus, 2)
    assert set(placed) == {"mid", "mid-later"}, "FIFO within a priority"
    await finish(bus, "mid")
    assert set(await wait_placed(bus, 2)) == {"mid-later", "low"}
    assert await assert_no_gpu_in_two_live_jobs(await bus.events()) == 4


async def test_a_gang_gets_all_its_gpus_on_one_runner(bus: Bus) -> None:
    await bus.put_heartbeat(heartbeat("small", gpus=2))
    await bus.put_heartbeat(heartbeat("big", gpus=4))
    scheduler = await bus.scheduler()
    await bus.submit("gang4", gpu_count=4, priority=9)
    await bus.submit("gang3", gpu_count=3, priority=8)
    await bus.submit("pair", gpu_count=2, priority=7)
    placed = await wait_placed(bus, 2)
    assert placed == {"gang4": ("big", (0, 1, 2, 3)), "pair": ("small", (0, 1))}
    assert (await scheduler.process_now()).placed == (), "no runner has 3 free GPUs"
    assert "gang3" not in await placements(bus)
    await finish(bus, "gang4")
    placed = await wait_placed(bus, 2)
    assert placed["gang3"][0] == "big"
    assert len(placed["gang3"][1]) == 3
    assert await assert_no_gpu_in_two_live_jobs(await bus.events()) == 3


async def test_a_paused_processor_places_nothing_until_resumed(bus: Bus) -> None:
    assert (await bus.send(c.PauseQueueProcessor(reason="maintenance"))).ok
    await bus.put_heartbeat(heartbeat("r1", gpus=2))
    scheduler = await bus.scheduler()
    await bus.submit("a")
    await eventually(lambda: scheduler.leading, what="leadership")
    result = await scheduler.process_now()
    assert result.processed is True
    assert result.paused is True
    assert result.placed == ()
    assert await placements(bus) == {}
    assert (await bus.send(c.ResumeQueueProcessor())).ok
    assert set(await wait_placed(bus, 1)) == {"a"}


async def test_process_now_over_nats_places_and_says_who_leads(bus: Bus) -> None:
    scheduler = await bus.scheduler(tick_s=3600.0)
    await eventually(lambda: scheduler.leading, what="leadership")
    await bus.put_heartbeat(heartbeat("r1", gpus=1))
    reply = await bus.nc.request(PROCESS_SUBJECT, b"{}", timeout=10)
    assert msgspec.json.decode(reply.data) == {
        "processed": True,
        "leader": scheduler.scheduler_id,
        "placed": [],
        "paused": False,
        "queued": 0,
        "unplaceable": [],
        "reason": None,
    }
    await bus.submit("big", gpu_count=2)
    await applied(scheduler, await bus.submit("a"))
    reply = await bus.nc.request(PROCESS_SUBJECT, b"{}", timeout=10)
    body = msgspec.json.decode(reply.data)
    assert body["processed"] is True
    assert body["queued"] == 1
    assert body["unplaceable"] == [
        {
            "job_id": "big",
            "reason": "needs 2 GPUs on one runner, but the largest live runner has 1; "
            "the job waits until a runner that big reports",
        }
    ]
    placed = await placements(bus)
    assert set(placed) == {"a"}
    assert (await request_processing(bus.nc)).leader == scheduler.scheduler_id


async def test_asking_to_process_without_any_scheduler_says_so(bus: Bus) -> None:
    result = await request_processing(bus.nc, timeout=2)
    assert result.processed is False
    assert result.reason == "no scheduler is running"


async def test_the_queue_view_shows_positions_and_estimated_starts(bus: Bus) -> None:
    await bus.put_heartbeat(heartbeat("r1", gpus=1))
    scheduler = await bus.scheduler()
    await bus.submit("running")
    await wait_placed(bus, 1)
    runner = {"job_id": "running", "attempt": 1, "runner_id": "r1"}
    assert (await bus.send(c.ReportStarted(**runner, pid=1, command=("swift",)))).ok
    assert (await bus.send(c.ReportProgress(**runner, step=10, remaining_s=100.0))).ok
    await bus.submit("next", priority=9)
    await bus.submit("later", priority=1)
    before = datetime.now(UTC)

    def shows_both() -> bool:
        return bool(bus.views) and [x.job_id for x in bus.views[-1].entries] == ["next", "later"]

    await eventually(shows_both, what="a queue view with both waiting jobs")
    view = bus.views[-1]
    assert [x.position for x in view.entries] == [1, 2]
    assert [x.priority for x in view.entries] == [9, 1]
    first = view.entries[0].estimated_start
    assert first is not None
    assert before + timedelta(seconds=95) <= first <= before + timedelta(seconds=102)
    assert view.entries[1].estimated_start is None, "behind a job of unknown length"
    assert view.as_of_position >= 8
    assert scheduler.is_leader


async def test_a_runner_that_stops_heartbeating_loses_its_jobs_to_a_live_one(bus: Bus) -> None:
    await bus.put_heartbeat(heartbeat("dying", gpus=1, lease_s=1.5))
    await bus.put_heartbeat(heartbeat("alive", gpus=2))
    await bus.scheduler()
    await bus.submit("first", priority=9)
    await bus.submit("second", priority=8)
    placed = await wait_placed(bus, 2)
    assert placed["first"] == ("dying", (0,)), "the tightest fit is the one-GPU runner"
    assert placed["second"][0] == "alive"

    async def moved() -> bool:
        state = (await bus.jobs())["first"]
        return state.runner_id == "alive" and state.attempt == 2

    await eventually(moved, what="the lost job placed on the live runner")
    types = [x.type for x in await bus.events() if x.stream_id == "job-first"]
    assert types[-4:] == ["JobScheduled", "JobLost", "JobRequeued", "JobScheduled"]
    lost = [x for x in await bus.events() if x.type == "JobLost"]
    event = e.decode_event("JobLost", lost[0].payload)
    assert isinstance(event, e.JobLost)
    assert event.reason == "runner dying stopped heartbeating"
    released = [x for x in await bus.events() if x.type == "GpusReleased"]
    assert released, "the lost attempt's claim is released"
    assert await assert_no_gpu_in_two_live_jobs(await bus.events()) == 3


async def _reasons(bus: Bus, job_id: str) -> list[str]:
    reasons = []
    for recorded in await bus.events():
        if recorded.stream_id == f"job-{job_id}" and recorded.type == "JobLost":
            event = e.decode_event("JobLost", recorded.payload)
            assert isinstance(event, e.JobLost)
            reasons.append(event.reason)
    return reasons


async def test_a_placement_never_started_is_ended_and_requeued(bus: Bus) -> None:
    """The runner heartbeats but never reports the start (it lost the assignment)."""
    await bus.put_heartbeat(heartbeat("r1", gpus=1))
    await bus.scheduler(start_timeout_s=1.0)
    await bus.submit("a")

    async def second_attempt() -> bool:
        return (await bus.jobs())["a"].attempt >= 2

    await eventually(second_attempt, timeout=20, what="attempt 2 after the start timeout")
    types = [x.type for x in await bus.events() if x.stream_id == "job-a"]
    assert types[2:6] == ["JobScheduled", "JobLost", "JobRequeued", "JobScheduled"]
    reasons = await _reasons(bus, "a")
    assert reasons[0] == "runner r1 did not report a start of attempt 1 within 1s"
    assert await assert_no_gpu_in_two_live_jobs(await bus.events()) >= 2


async def test_a_running_job_its_runner_no_longer_lists_is_marked_lost(bus: Bus) -> None:
    await bus.put_heartbeat(heartbeat("r1", gpus=1))
    await bus.scheduler(vanish_grace_s=0.5)
    await bus.submit("a")
    await wait_placed(bus, 1)
    runner = {"job_id": "a", "attempt": 1, "runner_id": "r1"}
    assert (await bus.send(c.ReportStarted(**runner, pid=1, command=("swift",)))).ok
    listed = msgspec.structs.replace(
        heartbeat("r1", gpus=1), jobs=(RunnerJob(job_id="a", attempt=1, pid=1),)
    )
    for _ in range(4):  # while the runner lists the process, nothing happens
        await asyncio.sleep(0.5)
        await bus.put_heartbeat(msgspec.structs.replace(listed, at=datetime.now(UTC)))
    assert await _reasons(bus, "a") == []

    async def lost() -> bool:
        await bus.put_heartbeat(heartbeat("r1", gpus=1))  # alive, without the process
        return bool(await _reasons(bus, "a"))

    await eventually(lost, timeout=20, what="JobLost for the vanished process")
    [reason] = (await _reasons(bus, "a"))[:1]
    assert reason.startswith("runner r1 runs no process of attempt 1:")
    types = [x.type for x in await bus.events() if x.stream_id == "job-a"]
    assert types[4:6] == ["JobLost", "JobRequeued"]


async def test_the_ledger_refuses_a_gpu_claimed_by_another_job(bus: Bus) -> None:
    first = await bus.send(c.ClaimGpus(job_id="a", attempt=1, runner_id="r1", gpu_ids=(0, 1)))
    assert first.ok
    assert [x.type for x in first.events] == ["GpusClaimed"]
    again = await bus.send(c.ClaimGpus(job_id="a", attempt=1, runner_id="r1", gpu_ids=(0, 1)))
    assert again.ok
    assert again.events == ()
    taken = await bus.send(c.ClaimGpus(job_id="b", attempt=1, runner_id="r1", gpu_ids=(1,)))
    assert not taken.ok
    assert taken.error is not None
    assert taken.error.code == "gpu_taken"
    assert (await bus.send(c.ReleaseGpus(job_id="a", attempt=1))).ok
    assert (await bus.send(c.ClaimGpus(job_id="b", attempt=1, runner_id="r1", gpu_ids=(1,)))).ok


async def test_a_claim_blocks_its_gpus_for_a_scheduler_that_did_not_make_it(bus: Bus) -> None:
    """GPUs claimed by someone else count as busy before any JobScheduled arrives."""
    assert (await bus.send(c.ClaimGpus(job_id="ghost", attempt=1, runner_id="r1", gpu_ids=(0,)))).ok
    await bus.put_heartbeat(heartbeat("r1", gpus=2))
    await bus.submit("a")
    await bus.scheduler()
    placed = await wait_placed(bus, 1)
    # The leader releases the claim of a job that does not exist.
    await eventually(lambda: _released(bus, "ghost"), what="the orphaned claim to be released")
    # Whichever the new leader did first, GPU 0 went to "a" only once the claim was gone.
    types = [
        (x.type, x.payload) for x in await bus.events() if x.type in ("GpusReleased", "GpusClaimed")
    ]
    released = next(i for i, (t, p) in enumerate(types) if t == "GpusReleased" and b"ghost" in p)
    claimed = next(i for i, (t, p) in enumerate(types) if t == "GpusClaimed" and b'"a"' in p)
    assert placed == {"a": ("r1", (1,))} or (placed == {"a": ("r1", (0,))} and released < claimed)


async def _released(bus: Bus, job_id: str) -> bool:
    for recorded in await bus.events():
        if recorded.type == "GpusReleased":
            event = e.decode_event(recorded.type, recorded.payload)
            if isinstance(event, e.GpusReleased) and event.job_id == job_id:
                return True
    return False


async def test_only_one_of_two_schedulers_leads_and_a_standby_takes_over(bus: Bus) -> None:
    await bus.put_heartbeat(heartbeat("r1", gpus=4))
    first = await bus.scheduler()
    second = await bus.scheduler()
    await eventually(lambda: first.leading or second.leading, what="a leader")
    await asyncio.sleep(0.5)
    assert [first.is_leader, second.is_leader].count(True) == 1
    leader, standby = (first, second) if first.is_leader else (second, first)

    await bus.submit("a")
    await bus.submit("b")
    await wait_placed(bus, 2)
    actors = {
        x.metadata.actor for x in await bus.events() if x.type in ("GpusClaimed", "JobScheduled")
    }
    assert actors == {"scheduler"}

    # A standby answers process requests by asking the leader.
    forwarded = await standby.process_now()
    assert forwarded.processed is False
    assert forwarded.leader == leader.scheduler_id
    for _ in range(4):  # the queue group spreads requests over both
        reply = msgspec.json.decode((await bus.nc.request(PROCESS_SUBJECT, b"{}", timeout=10)).data)
        assert reply["processed"] is True
        assert reply["leader"] == leader.scheduler_id

    # The leader dies without giving up its lease; the standby waits for it to expire.
    await leader.stop(release_lease=False)
    await eventually(lambda: standby.leading, timeout=30, what="takeover")
    await bus.submit("c")
    placed = await wait_placed(bus, 3)
    assert set(placed) == {"a", "b", "c"}
    assert await assert_no_gpu_in_two_live_jobs(await bus.events()) == 3


async def test_a_clean_stop_hands_leadership_over_at_once(bus: Bus) -> None:
    first = await bus.scheduler()
    await eventually(lambda: first.leading, what="leadership")
    assert first.lease is not None
    kv, key = first.lease.kv, first.lease.key
    await first.stop()
    # Handed over, not left to expire: the stop deleted the key (an expiry leaves no
    # delete marker), so the next scheduler's first try takes it.
    (latest,) = (await kv.history(key))[-1:]
    assert latest.operation == "DEL", latest
    second = await bus.scheduler()
    await eventually(lambda: second.leading, what="takeover")


class _SplitBrain(SchedulerService):
    """A scheduler that believes it leads whatever the lease says (a deposed leader)."""

    @property
    def leading(self) -> bool:
        return (
            self.feed is not None
            and self.feed.caught_up.is_set()
            and self.inventory_loaded.is_set()
        )


async def test_schedulers_that_all_think_they_lead_never_share_a_gpu(bus: Bus) -> None:
    """Split brain: two deposed leaders keep placing beside the real one; the ledger
    alone keeps their decisions apart."""
    await bus.put_heartbeat(heartbeat("r1", gpus=3))
    await bus.put_heartbeat(heartbeat("r2", gpus=2))
    for cls in (SchedulerService, _SplitBrain, _SplitBrain):
        await bus.scheduler(cls=cls, tick_s=0.05)
    sizes = [1, 2, 1, 3, 1, 2, 1, 1, 2, 1]
    await asyncio.gather(
        *(bus.submit(f"j{i}", gpu_count=n, priority=i % 3) for i, n in enumerate(sizes))
    )
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        states = await bus.jobs()
        if all(x.status.value == "succeeded" for x in states.values()):
            break
        await asyncio.sleep(0.3)
        for job_id, state in sorted(states.items()):
            if state.status.value == "scheduled":
                await finish(bus, job_id)
    states = await bus.jobs()
    assert {x.status.value for x in states.values()} == {"succeeded"}, states
    assert await assert_no_gpu_in_two_live_jobs(await bus.events()) == len(sizes)


async def test_a_pass_is_one_trace_with_the_commands_it_sends(bus: Bus) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("test", processor=SimpleSpanProcessor(exporter))
    await bus.put_heartbeat(heartbeat("r1", gpus=1))
    await bus.submit("a")
    await bus.scheduler()
    await wait_placed(bus, 1)

    def placing_pass() -> list[ReadableSpan]:
        return [
            span
            for span in exporter.get_finished_spans()
            if span.name == "scheduler pass" and (span.attributes or {}).get("scheduler.placed")
        ]

    await eventually(lambda: bool(placing_pass()), what="the placing pass to end")
    context = placing_pass()[0].context
    assert context is not None
    trace_id = f"{context.trace_id:032x}"
    for kind in ("GpusClaimed", "JobScheduled"):
        recorded = next(x for x in await bus.events() if x.type == kind)
        assert recorded.metadata.trace["traceparent"].split("-")[1] == trace_id, kind


@pytest.mark.parametrize("from_store", [True, False], ids=["store", "events-stream"])
async def test_a_job_let_go_at_rest_is_read_back_and_placed_when_started_again(
    bus: Bus, from_store: bool
) -> None:
    await bus.put_heartbeat(heartbeat("r1", gpus=1))
    options: dict[str, object] = {"max_jobs_at_rest": 0}
    if not from_store:
        options["store"] = None
    scheduler = await bus.scheduler(**options)
    await bus.submit("a")
    await wait_placed(bus, 1)
    runner = {"job_id": "a", "attempt": 1, "runner_id": "r1"}
    assert (await bus.send(c.ReportStarted(**runner, pid=1, command=("swift",)))).ok
    assert (await bus.send(c.ReportFailed(**runner, exit_code=1, reason="boom"))).ok
    await eventually(lambda: scheduler.state.dormant.evicted == 1, what="the job let go")
    assert "a" not in scheduler.state.jobs

    assert (await bus.send(c.StartJob(job_id="a"))).ok

    async def second_attempt() -> bool:
        state = (await bus.jobs())["a"]
        return state.status.value == "scheduled" and state.attempt == 2

    await eventually(second_attempt, what="the restarted job placed again")
    assert scheduler.state.forgotten == {}
    assert await assert_no_gpu_in_two_live_jobs(await bus.events()) >= 1


async def test_an_owners_gpu_quota_from_the_access_stream_holds_its_jobs(bus: Bus) -> None:
    """``quota set`` over the bus: the leader follows it from EVENTS, pass by pass."""
    assert (await bus.send(c.SetQuota(owner="ann", max_gpus=1))).ok
    await bus.put_heartbeat(heartbeat("r1", gpus=2))
    scheduler = await bus.scheduler()
    await bus.submit("ann-1", owner="ann")
    await bus.submit("ann-2", owner="ann")
    await bus.submit("bob-1", owner="bob")
    assert set(await wait_placed(bus, 2)) == {"ann-1", "bob-1"}

    def ann_2_blocked() -> bool:
        entries = bus.views[-1].entries if bus.views else ()
        return [(x.job_id, x.blocked_by) for x in entries] == [("ann-2", "owner_gpu_quota")]

    await eventually(ann_2_blocked, what="ann-2 shown as held by the quota")
    await finish(bus, "bob-1")  # a GPU is free, but not for ann
    await eventually(lambda: scheduler.state.placement.gpus_in_use("bob") == 0, what="bob done")
    assert (await scheduler.process_now()).placed == ()
    assert (await bus.send(c.SetQuota(owner="ann", max_gpus=2))).ok
    assert set(await wait_placed(bus, 2)) == {"ann-1", "ann-2"}
    assert await assert_no_gpu_in_two_live_jobs(await bus.events()) == 3


async def test_a_new_scheduler_starts_from_the_leaders_checkpoint_and_the_store(bus: Bus) -> None:
    await bus.put_heartbeat(heartbeat("r1", gpus=1))
    first = await bus.scheduler()
    for job_id in ("a", "b", "c"):
        await bus.submit(job_id)
    await wait_placed(bus, 1)
    await eventually(lambda: first.leading, what="the first scheduler leads")
    head = await bus.store.last_position()
    await eventually(lambda: first.state.position >= head, what="the first caught up")
    assert await first.save_checkpoint()
    assert not await first.save_checkpoint(), "nothing new: nothing saved"
    saved = await load_checkpoint(bus.store)
    assert saved is not None and saved.position == first.state.position
    await bus.submit("d")  # after the checkpoint: comes from the store at the next start

    second = await bus.scheduler()
    head = await bus.store.last_position()
    assert second.state.position == head, "started at the head, not replaying the stream"
    assert second.feed is not None and (second.feed.start_seq or 0) > 1
    await eventually(lambda: first.state.position >= head, what="the first saw d")
    assert second.state.jobs == first.state.jobs
    assert second.state.ledger == first.state.ledger
    assert [j.job_id for j in second.state.placement.queued_jobs()] == ["b", "c", "d"]


async def test_a_checkpoint_beyond_the_stores_head_is_ignored(bus: Bus) -> None:
    await bus.submit("a")
    head = await bus.store.last_position()
    ahead = SchedulerCheckpoint(position=head + 100, jobs={})
    await save_checkpoint(bus.store, ahead)  # as if the store were restored from a backup
    scheduler = await bus.scheduler()
    assert scheduler.state.position == head
    assert "a" in scheduler.state.jobs
