"""The webhook dispatcher against a real local HTTP receiver (Litestar under uvicorn).

Events come from the domain (``History``) through a real SQL store; every delivery outcome
must land in the store as an event, and a receiver that fails and then recovers gets each
event, in order, after retries spaced by the back-off.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import uvicorn
from litestar import Litestar, Request, Response, post
from tests.projections.read_models.history import History

from swift_trainer.bus.embedded import free_port
from swift_trainer.core import webhook_events as w
from swift_trainer.core.access import ACCESS_STREAM, KeyIssued
from swift_trainer.core.events import encode_event
from swift_trainer.core.ids import new_id
from swift_trainer.core.sqlstore import SqlEventStore
from swift_trainer.core.store import NewEvent
from swift_trainer.projections.audit import verify_store
from swift_trainer.projections.read_models import MemoryReadModel, catch_up
from swift_trainer.projections.webhook_dispatcher import (
    WebhookDispatcher,
    register_webhook,
    remove_webhook,
)

KEY = b"test-deployment-signing-key"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """Answers ``fail_first`` requests with 503, then 200; records every request."""

    fail_first: int = 0
    requests: list[Received] = field(default_factory=list)
    url: str = ""

    def app(self) -> Litestar:
        @post("/hook", status_code=200)
        async def hook(request: Request[Any, Any, Any]) -> Response[str]:
            self.requests.append(
                Received(dict(request.headers), await request.body(), time.monotonic())
            )
            if len(self.requests) <= self.fail_first:
                return Response("busy", status_code=503)
            return Response("ok", status_code=200)

        return Litestar([hook])


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    target = Receiver()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(target.app(), host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the receiver did not start"
        await asyncio.sleep(0.02)
    target.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield target
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def dispatcher(store: SqlEventStore) -> AsyncIterator[WebhookDispatcher]:
    made = WebhookDispatcher(store, KEY, base_delay_s=0.1, max_attempts=5, poll_s=0.05)
    try:
        yield made
    finally:
        await made.stop()


async def stored(store: SqlEventStore, history: History, done: int = 0) -> int:
    for recorded in history.records[done:]:
        new = NewEvent(recorded.event_id, recorded.type, recorded.payload)
        await store.append(recorded.stream_id, [new], expected_version=None)
    return len(history.records)


def finish(history: History, job_id: str, *, fail: bool = False) -> None:
    history.submit(job_id)
    history.schedule(job_id)
    history.started(job_id)
    history.progress(job_id, 1, loss=0.5)
    if fail:
        history.fail(job_id)
    else:
        history.succeed(job_id)


async def outcomes(store: SqlEventStore, webhook_id: str) -> list[w.AnyWebhookEvent]:
    return [
        w.decode_webhook_event(r.type, r.payload)
        for r in await store.read_stream(w.webhook_stream(webhook_id))
    ][1:]


async def drive(dispatcher: WebhookDispatcher, until: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "the dispatcher did not get there"
        await dispatcher.run_once()
        await asyncio.sleep(0.02)


async def test_signed_filtered_deliveries_recorded_as_events(
    store: SqlEventStore, dispatcher: WebhookDispatcher, receiver: Receiver
) -> None:
    history = History()
    finish(history, "before")  # before the registration: not delivered
    done = await stored(store, history)
    await register_webhook(store, "ops", receiver.url, ("JobSucceeded", "JobFailed"), actor="admin")
    finish(history, "ok-job")
    finish(history, "bad-job", fail=True)
    await stored(store, history, done)

    await drive(dispatcher, lambda: len(receiver.requests) == 2)
    await dispatcher.run_once()
    assert len(receiver.requests) == 2, "nothing else matches"
    bodies = [json.loads(r.body) for r in receiver.requests]
    assert [(b["type"], b["event"]["job_id"]) for b in bodies] == [
        ("JobSucceeded", "ok-job"),
        ("JobFailed", "bad-job"),
    ]
    secret = w.webhook_secret(KEY, "ops")
    for request in receiver.requests:
        headers = {k.title(): v for k, v in request.headers.items()}
        assert w.verify_signature(secret, headers, request.body, now=time.time())
        assert not w.verify_signature(secret, headers, request.body + b"x", now=time.time())
        assert headers[w.DELIVERY_HEADER].startswith("ops:")
    recorded = await outcomes(store, "ops")
    assert [type(x).__name__ for x in recorded] == ["WebhookDelivered", "WebhookDelivered"]
    assert [x.position for x in recorded] == [b["position"] for b in bodies]

    # The job projections and the audit take the webhook streams in their stride.
    read_model = MemoryReadModel()
    await catch_up(store, read_model)
    assert {j.job_id for j in (await read_model.list_jobs()).items} == {
        "before",
        "ok-job",
        "bad-job",
    }
    report = await verify_store(store)
    assert report.ok, report


async def test_a_failing_receiver_gets_retries_with_back_off_and_then_everything_in_order(
    store: SqlEventStore, receiver: Receiver
) -> None:
    receiver.fail_first = 3
    await register_webhook(store, "flaky", receiver.url, ("JobSucceeded",), actor="admin")
    history = History()
    finish(history, "first")
    finish(history, "second")
    await stored(store, history)

    first = WebhookDispatcher(store, KEY, base_delay_s=0.1, max_attempts=6)
    try:
        await drive(first, lambda: len(receiver.requests) == 2)
    finally:
        await first.stop()
    # A restarted dispatcher resumes from the recorded attempts, back-off included.
    second = WebhookDispatcher(store, KEY, base_delay_s=0.1, max_attempts=6)
    try:
        await drive(second, lambda: len(receiver.requests) == 5)
        await asyncio.sleep(0.3)
        await second.run_once()
    finally:
        await second.stop()

    jobs = [json.loads(r.body)["event"]["job_id"] for r in receiver.requests]
    assert jobs == ["first"] * 4 + ["second"], "retried in place, then the next one"
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:4], strict=False)]
    assert gaps[0] >= 0.09
    assert gaps[1] >= 0.19
    assert gaps[2] >= 0.39
    deliveries = {r.headers["x-swift-trainer-delivery"] for r in receiver.requests[:4]}
    assert len(deliveries) == 1, "one delivery id across its retries"
    recorded = await outcomes(store, "flaky")
    assert [(type(x).__name__, x.attempt) for x in recorded] == [
        ("WebhookDeliveryFailed", 1),
        ("WebhookDeliveryFailed", 2),
        ("WebhookDeliveryFailed", 3),
        ("WebhookDelivered", 4),
        ("WebhookDelivered", 1),
    ]
    failed = recorded[0]
    assert isinstance(failed, w.WebhookDeliveryFailed)
    assert (failed.status_code, failed.error.startswith("HTTP 503")) == (503, True)
    assert failed.retry_at is not None


async def test_gives_up_after_max_attempts_and_a_removed_webhook_gets_nothing(
    store: SqlEventStore, receiver: Receiver
) -> None:
    receiver.fail_first = 2
    await register_webhook(store, "brief", receiver.url, (), actor="admin")
    history = History()
    history.submit("only")
    await stored(store, history)  # JobSubmitted, JobQueued: both wanted (empty filter)
    dispatcher = WebhookDispatcher(store, KEY, base_delay_s=0.05, max_attempts=2)
    try:
        await drive(dispatcher, lambda: len(receiver.requests) == 3)
        recorded = await outcomes(store, "brief")
        assert [(type(x).__name__, x.attempt) for x in recorded] == [
            ("WebhookDeliveryFailed", 1),
            ("WebhookDeliveryFailed", 2),
            ("WebhookDelivered", 1),
        ]
        gave_up = recorded[1]
        assert isinstance(gave_up, w.WebhookDeliveryFailed)
        assert gave_up.retry_at is None
        await remove_webhook(store, "brief", actor="admin", reason="test over")
        history.reprioritise("only", 9)
        await stored(store, history, 2)
        await asyncio.sleep(0.1)
        assert await dispatcher.run_once() == 0
        assert len(receiver.requests) == 3
    finally:
        await dispatcher.stop()
    with pytest.raises(w.WebhookError, match="no webhook"):
        await remove_webhook(store, "never", actor="admin")


async def test_access_events_are_never_delivered_and_the_audit_folds_them(
    store: SqlEventStore, dispatcher: WebhookDispatcher, receiver: Receiver
) -> None:
    await register_webhook(store, "all", receiver.url, (), actor="admin")
    issued = KeyIssued(
        at=datetime.now(UTC), key_id="k1", owner="o", role="user", secret_sha256="a" * 64
    )
    await store.append(
        ACCESS_STREAM,
        [NewEvent(new_id(), "KeyIssued", encode_event(issued))],
        expected_version=None,
    )
    history = History()
    history.submit("after-key")
    await stored(store, history)
    wanted = len(history.records)
    await drive(dispatcher, lambda: len(receiver.requests) == wanted)
    await dispatcher.run_once()
    delivered = [json.loads(r.body)["type"] for r in receiver.requests]
    assert delivered == [r.type for r in history.records]
    assert "KeyIssued" not in delivered
    read_model = MemoryReadModel()
    await catch_up(store, read_model)
    assert [j.job_id for j in (await read_model.list_jobs()).items] == ["after-key"]
    report = await verify_store(store)
    assert report.ok, report


async def test_an_owners_webhook_gets_only_that_owners_job_events(
    store: SqlEventStore, dispatcher: WebhookDispatcher, receiver: Receiver
) -> None:
    history = History()
    await register_webhook(store, "alice-hook", receiver.url, (), actor="k", owner="alice")
    history.submit("a-job", owner="alice")
    history.submit("b-job", owner="bob")
    history.submit("cli-job")
    for job_id in ("a-job", "b-job", "cli-job"):
        history.schedule(job_id)
        history.started(job_id)
        history.succeed(job_id)
    await stored(store, history)

    await drive(dispatcher, lambda: len(receiver.requests) >= 5)
    await dispatcher.run_once()
    bodies = [json.loads(r.body) for r in receiver.requests]
    assert {b["event"]["job_id"] for b in bodies} == {"a-job"}
    assert [b["type"] for b in bodies] == [
        "JobSubmitted",
        "JobQueued",
        "JobScheduled",
        "JobStarted",
        "JobSucceeded",
    ]


def test_a_registration_stored_before_owners_decodes_as_every_jobs() -> None:
    old = b'{"type":"WebhookRegistered","at":"2026-01-01T00:00:00Z","webhook_id":"h","url":"http://x/"}'
    event = w.decode_webhook_event("WebhookRegistered", old)
    assert isinstance(event, w.WebhookRegistered)
    assert event.owner is None
    assert w.fold_webhook("h", [event]).owner is None
