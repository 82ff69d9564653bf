"""Commands to a handler in the same process: the handler's answers, without NATS."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client
from opentelemetry.context import Context

from swift_trainer.bus.command_client import CommandUnavailable
from swift_trainer.bus.command_handler import CommandHandler
from swift_trainer.bus.local_commands import LocalCommandClient
from swift_trainer.bus.messages import CommandEnvelope, CommandReply
from swift_trainer.core import commands as c
from swift_trainer.core.ids import job_stream
from swift_trainer.core.spec import JobSpec
from swift_trainer.core.sqlstore import SqlEventStore

SPEC = JobSpec(data_path="d", model_path="m", output_dir="o/local")


async def test_a_command_is_decided_and_recorded_once_by_the_handler_here(
    nc: Client, store: SqlEventStore
) -> None:
    handler = CommandHandler(store)  # not subscribed: nothing answers on NATS
    client = LocalCommandClient(nc, handler, actor="api")
    reply = await client.send(c.SubmitJob(job_id="local", spec=SPEC), command_id="cmd-1")
    assert reply.ok and not reply.duplicate
    assert reply.stream_id == job_stream("local")
    assert [event.type for event in reply.events] == ["JobSubmitted", "JobQueued"]
    again = await client.send(c.SubmitJob(job_id="local", spec=SPEC), command_id="cmd-1")
    assert again.duplicate and again.events == reply.events
    stored = await store.read_stream(job_stream("local"))
    assert [event.type for event in stored] == ["JobSubmitted", "JobQueued"]
    assert stored[0].metadata.actor == "api"


async def test_a_command_the_wire_would_refuse_is_refused_here_too(
    nc: Client, store: SqlEventStore
) -> None:
    client = LocalCommandClient(nc, CommandHandler(store))
    reply = await client.send(c.SubmitJob(job_id="no spaces allowed", spec=SPEC))
    assert not reply.ok and reply.error is not None
    assert "job_id" in reply.error.message
    assert await store.read_all() == []


async def test_a_refusal_comes_back_as_the_domain_error(nc: Client, store: SqlEventStore) -> None:
    client = LocalCommandClient(nc, CommandHandler(store))
    reply = await client.send(c.StartJob(job_id="missing"))
    assert reply.error is not None and reply.error.code == "job_not_found"


class _SlowHandler(CommandHandler):
    async def execute(
        self, envelope: CommandEnvelope, trace_context: dict[str, str] | Context | None = None
    ) -> CommandReply:
        await asyncio.sleep(0.3)
        return await super().execute(envelope, trace_context)


async def test_a_handler_slower_than_the_timeout_is_unavailable_but_still_records(
    nc: Client, store: SqlEventStore
) -> None:
    client = LocalCommandClient(nc, _SlowHandler(store), timeout=0.05)
    with pytest.raises(CommandUnavailable, match="retry with the same command id"):
        await client.send(c.SubmitJob(job_id="slow", spec=SPEC), command_id="cmd-slow", retries=0)
    for _ in range(100):
        if await store.read_stream(job_stream("slow")):
            break
        await asyncio.sleep(0.02)
    assert [e.type for e in await store.read_stream(job_stream("slow"))] == [
        "JobSubmitted",
        "JobQueued",
    ]
