from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from swift_trainer.bus import subjects
from swift_trainer.bus.command_client import CommandClient
from swift_trainer.bus.command_handler import CommandHandler
from swift_trainer.bus.messages import CommandEnvelope, decode_reply, encode
from swift_trainer.core import commands as c
from swift_trainer.core.ids import job_stream
from swift_trainer.core.spec import JobSpec
from swift_trainer.core.sqlstore import SqlEventStore


def _spec(**changes: object) -> JobSpec:
    base: dict[str, object] = {"data_path": "d#100", "model_path": "m", "output_dir": "out/a"}
    base.update(changes)
    return JobSpec(**base)  # type: ignore[arg-type]


@pytest.fixture
async def handler(nc: Client, store: SqlEventStore) -> AsyncIterator[CommandHandler]:
    service = CommandHandler(store)
    await service.start(nc)
    try:
        yield service
    finally:
        await service.stop()


async def test_request_reply_round_trip_appends_events(
    nc: Client,
    store: SqlEventStore,
    handler: CommandHandler,
) -> None:
    client = CommandClient(nc, timeout=5)
    reply = await client.send(c.SubmitJob(job_id="a", spec=_spec()))
    assert reply.ok, reply
    assert [e.type for e in reply.events] == ["JobSubmitted", "JobQueued"]
    assert reply.version == 2
    stored = await store.read_stream(job_stream("a"))
    assert [e.event_id for e in stored] == [e.event_id for e in reply.events]
    assert stored[0].metadata.command_id == reply.command_id


async def test_a_retried_command_id_gets_the_same_answer_and_appends_once(
    nc: Client,
    store: SqlEventStore,
    handler: CommandHandler,
) -> None:
    client = CommandClient(nc, timeout=5)
    first = await client.send(c.SubmitJob(job_id="a", spec=_spec()), command_id="cmd-1")
    again = await client.send(c.SubmitJob(job_id="a", spec=_spec()), command_id="cmd-1")
    assert first.ok
    assert again.ok, "a retry must not turn into job_already_exists"
    assert again.duplicate
    assert again.events == first.events
    assert await store.stream_version(job_stream("a")) == 2
    # A new command id for the same job is a new request, refused with a stable code.
    other = await client.send(c.SubmitJob(job_id="a", spec=_spec()))
    assert not other.ok
    assert other.error is not None
    assert other.error.code == "job_already_exists"


async def test_a_retried_refusal_keeps_its_answer_after_the_job_moves_on(
    nc: Client,
    handler: CommandHandler,
) -> None:
    client = CommandClient(nc, timeout=5)
    refused = await client.send(c.StartJob(job_id="late"), command_id="start-1")
    assert refused.error is not None
    assert refused.error.code == "job_not_found"
    assert (await client.send(c.SubmitJob(job_id="late", spec=_spec(auto_start=False)))).ok
    retried = await client.send(c.StartJob(job_id="late"), command_id="start-1")
    assert retried.error == refused.error
    assert retried.duplicate


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"not json", "malformed_message"),
        (
            b'{"command_id": "x", "command": {"type": "LaunchRockets", "job_id": "a"}}',
            "unknown_message_type",
        ),
        (b'{"command_id": "x", "command": {"type": "StopJob"}}', "malformed_message"),
        (
            b'{"command_id": "x", "command": {"type": "StopJob", "job_id": "a/../b"}}',
            "malformed_message",
        ),
        (b"[]", "malformed_message"),
    ],
)
async def test_malformed_messages_get_an_error_reply_and_the_handler_survives(
    nc: Client,
    handler: CommandHandler,
    payload: bytes,
    code: str,
) -> None:
    msg = await nc.request(subjects.command_subject("StopJob"), payload, timeout=5)
    reply = decode_reply(msg.data)
    assert not reply.ok
    assert reply.error is not None
    assert reply.error.code == code
    assert handler.malformed >= 1
    # still serving
    ok = await CommandClient(nc, timeout=5).send(c.SubmitJob(job_id="after", spec=_spec()))
    assert ok.ok


async def test_an_invalid_spec_inside_a_command_is_a_clear_error(
    nc: Client,
    handler: CommandHandler,
) -> None:
    raw = encode(
        CommandEnvelope(command_id="x", command=c.SubmitJob(job_id="a", spec=_spec())),
    ).replace(b'"out/a"', b'"../../etc"')
    msg = await nc.request(subjects.command_subject("SubmitJob"), raw, timeout=5)
    reply = decode_reply(msg.data)
    assert reply.error is not None
    assert reply.error.code == "invalid_spec"
    assert "OUTPUT_ROOT" in reply.error.message


async def test_two_handlers_in_a_queue_group_keep_one_stream_consistent(
    nc: Client,
    store: SqlEventStore,
    handler: CommandHandler,
) -> None:
    second = CommandHandler(store)
    await second.start(nc)
    try:
        client = CommandClient(nc, timeout=10)
        assert (await client.send(c.SubmitJob(job_id="p", spec=_spec()))).ok
        # Both handlers cache the stream; alternate priorities hammer it from both sides.
        replies = await asyncio.gather(
            *(client.send(c.ChangePriority(job_id="p", priority=i % 11)) for i in range(40)),
        )
        assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
        events = await store.read_stream(job_stream("p"))
        assert [e.version for e in events] == list(range(1, len(events) + 1))
    finally:
        await second.stop()
