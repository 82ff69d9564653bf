"""The runner agent against the simulator and a real bus (nats-server, SQLite, handler, relay).

Jobs are driven with the commands the scheduler would send (``ScheduleJob``), and judged by
the events the command handler stored for them.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from tests.runner.agent_helpers import (
    job_events,
    job_spec,
    log_messages,
    make_agent,
    ok,
    submit_and_schedule,
    types,
    wait_event,
)
from tests.runner.runner_helpers import alive, session_processes, wait_for

from swift_trainer.bus import subjects
from swift_trainer.bus.command_client import CommandClient
from swift_trainer.bus.command_handler import CommandHandler
from swift_trainer.bus.messages import EventEnvelope, ReplyError
from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.ids import job_stream
from swift_trainer.core.inventory import decode_heartbeat
from swift_trainer.core.sqlstore import SqlEventStore
from swift_trainer.runner.agent import RunnerAgent
from swift_trainer.runner.gpu_probe import FakeInventory
from swift_trainer.runner.run_state import run_key

AgentFactory = Callable[..., RunnerAgent]


@pytest.fixture
async def client(nc: Client, bus: CommandHandler) -> CommandClient:
    return CommandClient(nc, timeout=5.0, actor="test-scheduler")


@pytest.fixture
async def agents(
    nc: Client, bus: CommandHandler, tmp_path: Path, sim_env: dict[str, str]
) -> AsyncIterator[AgentFactory]:
    """Start agents on demand; each is stopped (and its jobs killed) at the end, while the
    handler still answers (``bus`` is torn down after this fixture)."""
    started: list[RunnerAgent] = []

    async def start(**kwargs: object) -> RunnerAgent:
        env = dict(sim_env)
        env.update(kwargs.pop("env", {}))  # type: ignore[arg-type]
        agent = make_agent(nc, tmp_path, env, **kwargs)  # type: ignore[arg-type]
        await agent.start()
        started.append(agent)
        return agent

    yield start  # type: ignore[misc]
    for agent in started:
        agent.stop_jobs_on_exit = True
        await agent.stop()


async def test_a_job_runs_to_success_with_progress_checkpoints_and_logs(
    agents: AgentFactory, client: CommandClient, store: SqlEventStore, nc: Client, tmp_path: Path
) -> None:
    agent = await agents()  # type: ignore[misc]
    await submit_and_schedule(client, "job-ok", job_spec("job-ok"))

    succeeded = (await wait_event(store, "job-ok", e.JobSucceeded))[0]
    events = await job_events(store, "job-ok")
    names = types(events)
    assert names[:4] == ["JobSubmitted", "JobQueued", "JobScheduled", "JobStarted"]
    assert names[-1] == "JobSucceeded"
    assert names.count("JobStarted") == 1

    started = next(x for x in events if isinstance(x, e.JobStarted))
    output_dir = tmp_path / "out" / "jobs" / "job-ok"
    assert started.runner_id == "r1"
    assert started.attempt == 1
    assert "sft" in started.command
    assert started.command[started.command.index("--output_dir") + 1] == str(output_dir)
    assert started.command[started.command.index("--max_steps") + 1] == "20"

    progress = [x for x in events if isinstance(x, e.JobProgressed)]
    assert progress, names
    assert progress[-1].step == 20
    assert progress[-1].max_steps == 20
    assert all(p.loss is not None for p in progress if p.eval_loss is None)
    checkpoints = [x for x in events if isinstance(x, e.CheckpointSaved)]
    assert [x.step for x in checkpoints] == [5, 10, 15, 20]
    assert checkpoints[-1].path == str(output_dir / "checkpoint-20")
    assert succeeded.final_step == 20
    assert succeeded.output_path == str(output_dir / "checkpoint-20")

    # Every report was sent as the runner, with the actor recorded.
    runner_events = await store.read_stream(job_stream("job-ok"))
    assert {r.metadata.actor for r in runner_events[3:]} == {"r1"}

    # The output lines are on the LOGS stream, in seq order, with what the read model needs.
    await agent.logs.flush()
    lines = await log_messages(nc, "job-ok")
    assert lines
    seqs = [m.seq for m in lines]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert all(m.job_id == "job-ok" and m.attempt == 1 and m.runner_id == "r1" for m in lines)
    assert any(m.stream == "stdout" and m.line.startswith("run sh:") for m in lines)
    assert any(m.stream == "stderr" and "Saving model checkpoint" in m.line for m in lines)
    assert not agent.supervisor.running()


async def test_heartbeat_lists_the_fake_gpus_and_the_running_job(
    agents: AgentFactory, client: CommandClient, nc: Client
) -> None:
    agent = await agents(gpus=2)  # type: ignore[misc]
    kv = await nc.jetstream().key_value(subjects.RUNNERS_BUCKET)
    beat = decode_heartbeat((await kv.get("r1")).value or b"")
    assert beat.runner_id == "r1"
    assert beat.lease_s == 5.0
    assert beat.inventory.source == "simulated"
    assert [g.index for g in beat.inventory.gpus] == [0, 1]
    assert beat.foreign_memory_mib == {0: 0, 1: 0}
    assert beat.jobs == ()

    await submit_and_schedule(client, "job-hb", job_spec("job-hb", max_steps=400), gpu_ids=(1,))
    await wait_for(lambda: bool(agent.supervisor.running()), timeout=20)
    count = agent.heartbeats

    async def beat_with_job() -> bool:
        beat = decode_heartbeat((await kv.get("r1")).value or b"")
        return bool(beat.jobs) and bool(beat.inventory.gpus[1].processes)

    deadline = asyncio.get_running_loop().time() + 10
    while not await beat_with_job():
        assert asyncio.get_running_loop().time() < deadline, "no heartbeat with the job"
        await asyncio.sleep(0.1)
    assert agent.heartbeats > count
    beat = decode_heartbeat((await kv.get("r1")).value or b"")
    assert [(j.job_id, j.attempt, j.kind) for j in beat.jobs] == [("job-hb", 1, "job")]
    assert beat.foreign_memory_mib == {0: 0, 1: 0}  # the job's own processes are not foreign
    assert beat.inventory.gpus[1].memory_used_mib > 0
    assert beat.inventory.gpus[0].processes == ()


async def test_a_gpu_held_by_a_foreign_process_is_refused(
    agents: AgentFactory, client: CommandClient, store: SqlEventStore
) -> None:
    agent = await agents(gpus=2)  # type: ignore[misc]
    assert isinstance(agent.inventory, FakeInventory)
    agent.inventory.add_foreign_process(1, pid=999_999, used_memory_mib=4096)
    await submit_and_schedule(client, "job-foreign", job_spec("job-foreign"), gpu_ids=(1,))
    rejected = (await wait_event(store, "job-foreign", e.AssignmentRejected))[0]
    assert "4096 MiB" in rejected.reason
    assert "JobRequeued" in types(await job_events(store, "job-foreign"))
    assert not agent.supervisor.running()
    beat = await agent.heartbeat()
    assert beat.foreign_memory_mib[1] == 4096


async def test_stop_mid_run_keeps_a_checkpoint_and_leaves_no_process(
    agents: AgentFactory, client: CommandClient, store: SqlEventStore
) -> None:
    agent = await agents(env={"SWIFT_SIM_STEP_SECONDS": "0.05"})  # type: ignore[misc]
    await submit_and_schedule(client, "job-stop", job_spec("job-stop", max_steps=2000))
    await wait_event(store, "job-stop", e.CheckpointSaved)
    started = (await wait_event(store, "job-stop", e.JobStarted))[0]
    assert alive(started.pid)

    await ok(client, c.StopJob(job_id="job-stop", reason="enough"))
    stopped = (await wait_event(store, "job-stop", e.JobStopped))[0]
    assert stopped.reason == "enough"
    assert stopped.attempt == 1
    assert stopped.checkpoint is not None
    assert (Path(stopped.checkpoint) / "trainer_state.json").is_file()
    step = json.loads((Path(stopped.checkpoint) / "trainer_state.json").read_text())["global_step"]
    assert 5 <= step < 2000
    assert session_processes(started.pid) == []
    assert not agent.supervisor.running()
    names = types(await job_events(store, "job-stop"))
    assert "JobFailed" not in names
    assert "JobSucceeded" not in names


async def test_a_failure_reports_exit_code_and_stderr_tail(
    agents: AgentFactory, client: CommandClient, store: SqlEventStore
) -> None:
    await agents(env={"SWIFT_SIM_FAIL_AT_STEP": "3"})  # type: ignore[misc]
    await submit_and_schedule(client, "job-oom", job_spec("job-oom"))
    failed = (await wait_event(store, "job-oom", e.JobFailed))[0]
    assert failed.exit_code == 1
    assert "exited with code 1" in failed.reason
    assert "CUDA out of memory" in failed.stderr_tail
    assert failed.stderr_tail.rstrip().endswith(
        "GPU 0 has a total capacity of 79.25 GiB of which 1.12 GiB is free."
    )


async def test_a_missing_executable_rejects_the_assignment(
    agents: AgentFactory, client: CommandClient, store: SqlEventStore
) -> None:
    agent = await agents()  # type: ignore[misc]
    agent.swift_executable = "/nonexistent/swift"
    await submit_and_schedule(client, "job-noexe", job_spec("job-noexe"))
    rejected = (await wait_event(store, "job-noexe", e.AssignmentRejected))[0]
    assert "executable not found: /nonexistent/swift" in rejected.reason


async def _scheduled_envelope(
    store: SqlEventStore, job_id: str
) -> tuple[EventEnvelope, e.JobScheduled]:
    record = next(
        r for r in await store.read_stream(job_stream(job_id)) if r.type == "JobScheduled"
    )
    event = e.decode_event(record.type, record.payload)
    assert isinstance(event, e.JobScheduled)
    return EventEnvelope.from_recorded(record), event


async def test_a_redelivered_start_does_nothing(
    agents: AgentFactory, client: CommandClient, store: SqlEventStore
) -> None:
    agent = await agents(env={"SWIFT_SIM_STEP_SECONDS": "0.05"})  # type: ignore[misc]
    await submit_and_schedule(client, "job-redo", job_spec("job-redo", max_steps=60))
    await wait_event(store, "job-redo", e.JobStarted)
    envelope, event = await _scheduled_envelope(store, "job-redo")
    [record] = agent.supervisor.running()

    await agent.dispatch(envelope, event)  # while it runs: the same run, nothing new
    assert [(r.pid, r.attempt) for r in agent.supervisor.running()] == [(record.pid, 1)]

    await wait_event(store, "job-redo", e.JobSucceeded)
    await agent.dispatch(envelope, event)  # after it ended: not trained a second time
    assert not agent.supervisor.running()
    await agent.outbox.drain()
    names = types(await job_events(store, "job-redo"))
    assert names.count("JobStarted") == 1
    assert names.count("JobSucceeded") == 1
    assert "AssignmentRejected" not in names


async def test_malformed_messages_and_log_lines_break_nothing(
    agents: AgentFactory,
    client: CommandClient,
    store: SqlEventStore,
    nc: Client,
    tmp_path: Path,
) -> None:
    agent = await agents(env={"SWIFT_SIM_STEP_SECONDS": "0.05"})  # type: ignore[misc]
    js = nc.jetstream()
    await js.publish(f"{subjects.EVENTS_ROOT}.job.r1.bogus.JobScheduled", b"{not json")
    await js.publish(
        f"{subjects.EVENTS_ROOT}.job.r1.bogus.JobScheduled",
        msgspec.json.encode({"position": 1, "type": "JobScheduled"}),
    )
    await wait_for(lambda: agent.malformed == 2, timeout=10)

    await submit_and_schedule(client, "job-junk", job_spec("job-junk", max_steps=40))
    await wait_event(store, "job-junk", e.JobStarted)
    log_file = tmp_path / "out" / "jobs" / "job-junk" / "logging.jsonl"
    await wait_for(log_file.exists, timeout=10)
    with log_file.open("a", encoding="utf-8") as handle:
        handle.write('{"loss": 1.0, "global_step/max_steps": "7/4\n')  # cut off
        handle.write("\x00\x01 not json at all\n")
        handle.write('["a", "list"]\n')
    succeeded = (await wait_event(store, "job-junk", e.JobSucceeded))[0]
    assert succeeded.final_step == 40
    events = await job_events(store, "job-junk")
    assert [x.step for x in events if isinstance(x, e.JobProgressed)][-1] == 40


async def test_export_merges_once_and_answers_with_an_existing_artifact(
    agents: AgentFactory, client: CommandClient, store: SqlEventStore
) -> None:
    agent = await agents()  # type: ignore[misc]
    await submit_and_schedule(client, "job-exp", job_spec("job-exp"))
    await wait_event(store, "job-exp", e.JobSucceeded)

    await ok(client, c.RequestExport(job_id="job-exp"))
    done = (await wait_event(store, "job-exp", e.ExportSucceeded))[0]
    started = (await wait_event(store, "job-exp", e.ExportStarted))[0]
    artifact = Path(done.artifact_path)
    assert artifact.name == "checkpoint-20-merged"
    assert (artifact / "config.json").is_file()
    assert started.command[started.command.index("--adapters") + 1] == str(
        artifact.parent / "checkpoint-20"
    )

    # The same checkpoint again: the domain answers without asking the runner.
    again = await ok(client, c.RequestExport(job_id="job-exp"))
    assert again.events == ()

    # A merged model already on disk (made by hand) is reported without running swift.
    by_hand = artifact.parent / "checkpoint-15-merged"
    shutil.copytree(artifact, by_hand)
    await ok(client, c.RequestExport(job_id="job-exp", checkpoint="checkpoint-15"))
    succeeded = await wait_event(store, "job-exp", e.ExportSucceeded, count=2)
    assert succeeded[1].artifact_path == str(by_hand)
    assert (
        len([x for x in await job_events(store, "job-exp") if isinstance(x, e.ExportStarted)]) == 1
    )
    assert not agent.supervisor.running()


async def test_a_stale_attempt_is_stopped_when_its_report_is_refused(
    agents: AgentFactory, client: CommandClient, store: SqlEventStore
) -> None:
    agent = await agents(env={"SWIFT_SIM_STEP_SECONDS": "0.05"})  # type: ignore[misc]
    await submit_and_schedule(client, "job-stale", job_spec("job-stale", max_steps=2000))
    started = (await wait_event(store, "job-stale", e.JobStarted))[0]
    # The scheduler lost sight of this runner: the attempt is lost and the job requeued.
    await ok(client, c.MarkLost(job_id="job-stale", attempt=1))
    await wait_for(lambda: not agent.supervisor.running(), timeout=30)
    assert session_processes(started.pid) == []
    names = types(await job_events(store, "job-stale"))
    assert names[-2:] == ["JobLost", "JobRequeued"]


async def test_reports_wait_out_a_handler_outage_and_arrive_in_order(
    agents: AgentFactory,
    client: CommandClient,
    store: SqlEventStore,
    bus: CommandHandler,
    nc: Client,
) -> None:
    agent = await agents(env={"SWIFT_SIM_STEP_SECONDS": "0.05"})  # type: ignore[misc]
    await submit_and_schedule(client, "job-outage", job_spec("job-outage", max_steps=30))
    await wait_event(store, "job-outage", e.JobStarted)
    await bus.stop()  # no handler answers from now on
    await wait_for(lambda: not agent.supervisor.running(), timeout=30)
    assert agent.outbox.pending("job-outage") >= 1  # the outcome at least is waiting
    before = types(await job_events(store, "job-outage"))
    assert "JobSucceeded" not in before

    await bus.start(nc)
    succeeded = (await wait_event(store, "job-outage", e.JobSucceeded))[0]
    assert succeeded.final_step == 30
    events = await job_events(store, "job-outage")
    assert types(events)[-1] == "JobSucceeded"
    assert [x.step for x in events if isinstance(x, e.CheckpointSaved)] == [5, 10, 15, 20, 25, 30]


async def test_stop_for_a_job_not_running_here_is_answered_at_once(
    agents: AgentFactory, client: CommandClient, store: SqlEventStore, nc: Client
) -> None:
    # Placed on r9 and stopped before r9 ever ran it (its state was lost, say).
    await submit_and_schedule(client, "job-ghost", job_spec("job-ghost"), runner_id="r9")
    await ok(client, c.StopJob(job_id="job-ghost"))
    subject = subjects.event_subject(job_stream("job-ghost"), "StopRequested", "r9")
    js = nc.jetstream()

    async def published() -> bool:
        try:
            await js.get_last_msg(subjects.EVENTS_STREAM, subject)
        except Exception:
            return False
        return True

    deadline = asyncio.get_running_loop().time() + 10
    while not await published():
        assert asyncio.get_running_loop().time() < deadline, "StopRequested never published"
        await asyncio.sleep(0.05)
    agent = await agents(runner_id="r9")  # its new consumer starts after those events
    stop_record = next(
        r for r in await store.read_stream(job_stream("job-ghost")) if r.type == "StopRequested"
    )
    await agent.dispatch(
        EventEnvelope.from_recorded(stop_record),
        e.decode_event(stop_record.type, stop_record.payload),
    )
    stopped = (await wait_event(store, "job-ghost", e.JobStopped))[0]
    assert stopped.attempt == 1
    assert not agent.supervisor.is_running(run_key("job", "job-ghost"))
    assert "JobStarted" not in types(await job_events(store, "job-ghost"))


async def test_a_refusal_the_store_does_not_confirm_never_stops_the_training(
    agents: AgentFactory, client: CommandClient, store: SqlEventStore
) -> None:
    """A handler with a stale picture once refused reports of live attempts, and the runner
    killed the training on the spot. Now the runner asks for the stored state first."""
    agent = await agents(env={"SWIFT_SIM_STEP_SECONDS": "0.05"})  # type: ignore[misc]
    await submit_and_schedule(client, "job-live", job_spec("job-live", max_steps=60))
    started = (await wait_event(store, "job-live", e.JobStarted))[0]
    stale = ReplyError(
        code="stale_assignment",
        message="report for attempt 1, whose current attempt is 0 (queued)",
    )
    await agent._on_refused(
        c.ReportProgress(job_id="job-live", attempt=1, runner_id="r1", step=1), stale
    )
    # A refused checkpoint of the live attempt is sent again (with a new command id).
    path = "/elsewhere/checkpoint-1"
    await agent._on_refused(
        c.ReportCheckpoint(job_id="job-live", attempt=1, runner_id="r1", step=1, path=path),
        stale,
    )
    assert alive(started.pid)
    await wait_event(store, "job-live", e.JobSucceeded)
    saved = [x for x in await job_events(store, "job-live") if isinstance(x, e.CheckpointSaved)]
    assert path in [x.path for x in saved]


async def test_without_an_answer_from_the_store_the_training_is_kept(
    agents: AgentFactory, client: CommandClient, store: SqlEventStore, bus: CommandHandler
) -> None:
    agent = await agents(env={"SWIFT_SIM_STEP_SECONDS": "0.05"})  # type: ignore[misc]
    await submit_and_schedule(client, "job-dark", job_spec("job-dark", max_steps=2000))
    started = (await wait_event(store, "job-dark", e.JobStarted))[0]
    await bus.stop()  # nobody can confirm the refusal
    agent.client.timeout = 0.5
    await agent._on_refused(
        c.ReportStarted(job_id="job-dark", attempt=1, runner_id="r1", pid=1, command=()),
        ReplyError(code="invalid_transition", message="cannot record ReportStarted"),
    )
    await asyncio.sleep(0.5)
    assert alive(started.pid)
    assert agent.supervisor.running()
