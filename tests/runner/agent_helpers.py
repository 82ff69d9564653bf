"""Driving the runner agent through the real bus: commands in, stored events out."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy
from tests.runner.runner_helpers import SWIFT_SIM

from swift_trainer.bus import subjects
from swift_trainer.bus.command_client import CommandClient
from swift_trainer.bus.messages import CommandReply, LogMessage, decode_log_payload
from swift_trainer.core import commands as c
from swift_trainer.core import events as e
from swift_trainer.core.ids import job_stream
from swift_trainer.core.spec import JobSpec, TrainArgs
from swift_trainer.core.sqlstore import SqlEventStore
from swift_trainer.runner.agent import RunnerAgent
from swift_trainer.runner.gpu_probe import FakeInventory
from swift_trainer.runner.supervisor import Supervisor


def fast_supervisor(state_dir: Path, inventory: FakeInventory, **kwargs: float) -> Supervisor:
    options: dict[str, float] = {
        "grace_period_s": 15.0,
        "orphan_grace_s": 5.0,
        "poll_interval_s": 0.05,
        "progress_interval_s": 0.0,
        "tree_refresh_s": 0.1,
        "state_flush_s": 0.2,
    }
    options.update(kwargs)
    return Supervisor(state_dir=state_dir, process_registry=inventory, **options)


def make_agent(
    nc: Client,
    root: Path,
    env: dict[str, str],
    *,
    runner_id: str = "r1",
    gpus: int = 2,
    **kwargs: object,
) -> RunnerAgent:
    inventory = FakeInventory(gpus, output_root=root / "out")
    supervisor = fast_supervisor(root / f"{runner_id}-runs", inventory)
    options: dict[str, object] = {
        "heartbeat_s": 0.2,
        "lease_s": 5.0,
        "grace_period_s": 15.0,
        "command_timeout_s": 2.0,
    }
    options.update(kwargs)
    return RunnerAgent(
        nc,
        runner_id=runner_id,
        inventory=inventory,
        supervisor=supervisor,
        swift_executable=SWIFT_SIM,
        output_root=root / "out",
        state_dir=root / f"{runner_id}-agent",
        base_env=env,
        **options,  # type: ignore[arg-type]
    )


def job_spec(job_id: str, data: str = "d#40", **train: object) -> JobSpec:
    args: dict[str, object] = {
        "max_steps": 20,
        "save_steps": 5,
        "logging_steps": 2,
        "gradient_accumulation_steps": 1,
    }
    args.update(train)
    return JobSpec(
        data_path=data,
        model_path="Qwen/Qwen2.5-7B-Instruct",
        output_dir=f"jobs/{job_id}",
        train_args=TrainArgs(**args),  # type: ignore[arg-type]
    )


async def ok(client: CommandClient, command: c.AnyCommand) -> CommandReply:
    reply = await client.send(command)
    assert reply.ok, reply.error
    return reply


async def submit_and_schedule(
    client: CommandClient,
    job_id: str,
    spec: JobSpec,
    *,
    runner_id: str = "r1",
    gpu_ids: tuple[int, ...] = (0,),
    attempt: int = 1,
) -> None:
    """What the scheduler would do (it is built elsewhere): submit, then place."""
    await ok(client, c.SubmitJob(job_id=job_id, spec=spec))
    await ok(
        client,
        c.ScheduleJob(job_id=job_id, attempt=attempt, runner_id=runner_id, gpu_ids=gpu_ids),
    )


async def job_events(store: SqlEventStore, job_id: str) -> list[e.AnyEvent]:
    return [
        e.decode_event(r.type, r.payload, r.schema_version)
        for r in await store.read_stream(job_stream(job_id))
    ]


EventT = TypeVar("EventT", bound=e.Event)


async def wait_event(
    store: SqlEventStore,
    job_id: str,
    kind: type[EventT],
    timeout: float = 30.0,
    count: int = 1,
) -> list[EventT]:
    """The job's events of ``kind`` once there are ``count`` of them."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [x for x in await job_events(store, job_id) if isinstance(x, kind)]
        if len(found) >= count:
            return found
        if asyncio.get_running_loop().time() > deadline:
            names = [type(x).__name__ for x in await job_events(store, job_id)]
            raise AssertionError(f"no {kind.__name__} for {job_id} in time; events: {names}")
        await asyncio.sleep(0.05)


def types(events: Sequence[e.AnyEvent]) -> list[str]:
    return [type(x).__name__ for x in events]


async def log_messages(nc: Client, job_id: str) -> list[LogMessage]:
    """Every line of the job on the LOGS stream (batches unpacked), in stream order."""
    js = nc.jetstream()
    sub = await js.subscribe(
        subjects.log_subject(job_id),
        stream=subjects.LOGS_STREAM,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    info = await js.stream_info(subjects.LOGS_STREAM, subjects_filter=subjects.log_subject(job_id))
    expected = (info.state.subjects or {}).get(subjects.log_subject(job_id), 0)
    messages: list[LogMessage] = []
    received = 0
    try:
        while received < expected:
            msg = await sub.next_msg(timeout=5.0)
            messages.extend(decode_log_payload(msg.data))
            received += 1
    finally:
        await sub.unsubscribe()
    return messages
