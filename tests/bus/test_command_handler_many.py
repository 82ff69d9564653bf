"""Several command handlers on one store: no lost update, no refusal the store does not
justify, conflict reloads from the cached version, and the GPU ledger's snapshot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
from nats.aio.client import Client

from swift_trainer.bus.command_client import CommandClient
from swift_trainer.bus.command_handler import CommandHandler
from swift_trainer.bus.messages import CommandEnvelope, CommandReply
from swift_trainer.core import aggregates
from swift_trainer.core import commands as c
from swift_trainer.core.ids import GPU_LEDGER_STREAM, job_stream, new_id
from swift_trainer.core.job import JobState, JobStatus
from swift_trainer.core.spec import JobSpec
from swift_trainer.core.sqlstore import SqlEventStore
from swift_trainer.core.store import RecordedEvent


def _spec(**changes: object) -> JobSpec:
    base: dict[str, object] = {"data_path": "d#100", "model_path": "m", "output_dir": "out/a"}
    base.update(changes)
    return JobSpec(**base)  # type: ignore[arg-type]


class CountingStore(SqlEventStore):
    """The SQL store, remembering the ``after_version`` of every stream read."""

    reads: list[tuple[str, int]]

    async def read_stream(self, stream_id: str, *, after_version: int = 0) -> list[RecordedEvent]:
        self.reads.append((stream_id, after_version))
        return await super().read_stream(stream_id, after_version=after_version)


@pytest.fixture
def counting(store: SqlEventStore) -> CountingStore:
    store.__class__ = CountingStore
    assert isinstance(store, CountingStore)
    store.reads = []
    return store


async def _run(handler: CommandHandler, command: c.AnyCommand) -> CommandReply:
    return await handler.execute(CommandEnvelope(command_id=new_id(), command=command))


async def _job(store: SqlEventStore, job_id: str) -> JobState:
    state = aggregates.fold(job_stream(job_id), await store.read_stream(job_stream(job_id)))
    assert isinstance(state, JobState)
    return state


async def test_alternating_priorities_through_two_handlers_are_never_lost(
    store: SqlEventStore,
) -> None:
    """The lost update of the issue: each handler cached the job; the one that did not see
    the other's change answered "already has priority N" from its stale cache."""
    one, two = CommandHandler(store), CommandHandler(store)
    assert (await _run(one, c.SubmitJob(job_id="j", spec=_spec(auto_start=False)))).ok
    await _run(two, c.ChangePriority(job_id="j", priority=5))  # both handlers cache the job
    lost = []
    for turn in range(40):
        handler = (one, two)[turn % 2]
        wanted = (7, 5)[turn % 2]
        reply = await _run(handler, c.ChangePriority(job_id="j", priority=wanted))
        assert reply.ok, reply
        if (await _job(store, "j")).priority != wanted:
            lost.append(turn)
    assert lost == []


async def test_a_refusal_is_checked_against_the_store_before_it_is_recorded(
    store: SqlEventStore,
) -> None:
    """Handler one cached the job as queued; two scheduled and started it. A progress
    report through one must be recorded, not refused as stale (the runner would kill the
    training on such a refusal)."""
    one, two = CommandHandler(store), CommandHandler(store)
    assert (await _run(one, c.SubmitJob(job_id="j", spec=_spec()))).ok
    await _run(two, c.ChangePriority(job_id="j", priority=6))
    assert (await _run(two, c.ScheduleJob(job_id="j", attempt=1, runner_id="r", gpu_ids=(0,)))).ok
    assert (
        await _run(
            two, c.ReportStarted(job_id="j", attempt=1, runner_id="r", pid=42, command=("s",))
        )
    ).ok
    reply = await _run(one, c.ReportProgress(job_id="j", attempt=1, runner_id="r", step=3))
    assert reply.ok, reply.error
    assert [x.type for x in reply.events] == ["JobProgressed"]
    state = await _job(store, "j")
    assert state.status is JobStatus.RUNNING
    assert state.progress is not None
    assert state.progress.step == 3


async def test_a_justified_refusal_is_still_recorded_once(store: SqlEventStore) -> None:
    one, two = CommandHandler(store), CommandHandler(store)
    assert (await _run(one, c.SubmitJob(job_id="j", spec=_spec()))).ok
    envelope = CommandEnvelope(
        command_id="report-1",
        command=c.ReportProgress(job_id="j", attempt=1, runner_id="r", step=1),
    )
    refused = await two.execute(envelope)
    assert refused.error is not None
    assert refused.error.code == "stale_assignment"
    again = await one.execute(envelope)
    assert again.error == refused.error
    record = await store.find_command("report-1")
    assert record is not None
    assert record.error_code == "stale_assignment"


async def test_an_already_so_answer_is_kept_for_its_command_id(store: SqlEventStore) -> None:
    """A no-op is an answer too: sent again after the job ended, the same command id must
    not turn into a refusal (the chaos run caught that)."""
    handler = CommandHandler(store)
    assert (await _run(handler, c.SubmitJob(job_id="j", spec=_spec()))).ok
    envelope = CommandEnvelope(
        command_id="prio-1", command=c.ChangePriority(job_id="j", priority=5)
    )
    first = await handler.execute(envelope)
    assert first.ok
    assert first.events == ()
    assert not first.duplicate
    assert (await _run(handler, c.StopJob(job_id="j"))).ok
    again = await CommandHandler(store).execute(envelope)
    assert again.ok, again.error
    assert again.events == ()
    assert again.duplicate
    other = await handler.execute(
        CommandEnvelope(command_id="prio-2", command=c.ChangePriority(job_id="j", priority=5))
    )
    assert other.error is not None, "a new command id is decided on the job as it is now"


async def test_a_conflict_reloads_only_the_events_after_the_cached_version(
    counting: CountingStore,
) -> None:
    one, two = CommandHandler(counting), CommandHandler(counting)
    assert (await _run(one, c.SubmitJob(job_id="j", spec=_spec(auto_start=False)))).ok
    await _run(two, c.ChangePriority(job_id="j", priority=6))  # two folds the stream once
    for priority in (7, 8, 9):
        assert (await _run(one, c.ChangePriority(job_id="j", priority=priority))).ok
    counting.reads.clear()
    reply = await _run(two, c.ChangePriority(job_id="j", priority=3))  # two's cache is stale
    assert reply.ok, reply
    assert counting.reads == [(job_stream("j"), 3)], "read from the cached version 3"
    assert (await _job(counting, "j")).priority == 3


async def test_the_gpu_ledger_is_snapshotted_and_loaded_from_its_snapshot(
    counting: CountingStore,
) -> None:
    handler = CommandHandler(counting, snapshot_every=10)
    for attempt in range(1, 13):
        claim = c.ClaimGpus(job_id="j", attempt=attempt, runner_id="r", gpu_ids=(0, 1))
        assert (await _run(handler, claim)).ok
    # attempts 2.. each release the previous claim and claim again: 1 + 11 * 2 = 23 events
    assert await counting.stream_version(GPU_LEDGER_STREAM) == 23
    snapshot = await counting.load_snapshot(GPU_LEDGER_STREAM)
    assert snapshot is not None
    assert snapshot.version == 21  # saved at 11 and at 21, every 10 events
    counting.reads.clear()
    cold = CommandHandler(counting, snapshot_every=10)
    refused = await _run(cold, c.ClaimGpus(job_id="other", attempt=1, runner_id="r", gpu_ids=(1,)))
    assert refused.error is not None
    assert refused.error.code == "gpu_taken"
    assert counting.reads[0] == (GPU_LEDGER_STREAM, snapshot.version)
    full = aggregates.fold(GPU_LEDGER_STREAM, await counting.read_stream(GPU_LEDGER_STREAM))
    assert cold._states[GPU_LEDGER_STREAM] == full


async def test_a_broken_snapshot_is_ignored(counting: CountingStore) -> None:
    handler = CommandHandler(counting, snapshot_every=10)
    assert (await _run(handler, c.ClaimGpus(job_id="j", attempt=1, runner_id="r", gpu_ids=(0,)))).ok
    await counting.save_snapshot(GPU_LEDGER_STREAM, 1, b"not a snapshot")
    cold = CommandHandler(counting, snapshot_every=10)
    refused = await _run(cold, c.ClaimGpus(job_id="k", attempt=1, runner_id="r", gpu_ids=(0,)))
    assert refused.error is not None
    assert refused.error.code == "gpu_taken"


@pytest.fixture
async def two_handlers(nc: Client, store: SqlEventStore) -> AsyncIterator[Sequence[CommandHandler]]:
    handlers = [CommandHandler(store), CommandHandler(store)]
    for handler in handlers:
        await handler.start(nc)
    try:
        yield handlers
    finally:
        for handler in handlers:
            await handler.stop()


async def test_two_handlers_in_one_queue_group_serve_every_path(
    nc: Client, store: SqlEventStore, two_handlers: Sequence[CommandHandler]
) -> None:
    """Stop, start, priority and runner reports, sent through the queue group so that both
    handlers see every job with stale caches: every command is answered as the stored
    stream says."""
    client = CommandClient(nc, timeout=10)

    async def ok(command: c.AnyCommand) -> CommandReply:
        reply = await client.send(command)
        assert reply.ok, (command, reply.error)
        return reply

    async def life(job_id: str) -> None:
        await ok(c.SubmitJob(job_id=job_id, spec=_spec(auto_start=False)))
        for attempt in (1, 2, 3):
            await ok(c.StartJob(job_id=job_id))
            for priority in (2, 8, 2, 8):
                await ok(c.ChangePriority(job_id=job_id, priority=priority))
            await ok(c.ScheduleJob(job_id=job_id, attempt=attempt, runner_id="r", gpu_ids=(0,)))
            await ok(
                c.ReportStarted(
                    job_id=job_id, attempt=attempt, runner_id="r", pid=attempt, command=("s",)
                )
            )
            for step in range(1, 4):
                await ok(c.ReportProgress(job_id=job_id, attempt=attempt, runner_id="r", step=step))
            await ok(c.StopJob(job_id=job_id))
            await ok(c.ReportStopped(job_id=job_id, attempt=attempt, runner_id="r"))
            assert (await _job(store, job_id)).status is JobStatus.STOPPED
        await ok(c.StartJob(job_id=job_id))
        await ok(c.ScheduleJob(job_id=job_id, attempt=4, runner_id="r", gpu_ids=(0,)))
        await ok(c.ReportStarted(job_id=job_id, attempt=4, runner_id="r", pid=4, command=("s",)))
        await ok(c.ReportSucceeded(job_id=job_id, attempt=4, runner_id="r", final_step=9))

    await asyncio.gather(*(life(f"job-{n}") for n in range(6)))
    for n in range(6):
        state = await _job(store, f"job-{n}")
        assert state.status is JobStatus.SUCCEEDED
        assert state.attempt == 4
    served = [h for h in two_handlers if h._states]
    assert len(served) == 2, "the queue group spread the commands over both handlers"
