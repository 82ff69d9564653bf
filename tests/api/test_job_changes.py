"""The jobs list's live feed (``GET /jobs/changes/stream``) on the real stack.

Over a socket (uvicorn) where the HTTP shape matters, and by iterating the stream's
generator on the same stack where a test needs a caller other than the operator.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar.response.sse import ServerSentEventMessage

from swift_trainer.api.auth.principal import Principal
from swift_trainer.api.jobs import changes
from swift_trainer.api.jobs.changes import follow_job_changes
from swift_trainer.core import commands as c
from swift_trainer.core.spec import JobSpec

from .conftest import Stack, read_model_of, running_stack, wait_for
from .test_streams import SseReader, serving


@pytest.fixture
async def live(backend: str, tmp_path: Path) -> AsyncIterator[tuple[Stack, str]]:
    async with (
        read_model_of(backend) as model,
        running_stack(tmp_path, model, stream_heartbeat_s=0.5) as (stack, app),
        serving(app) as base,
    ):
        yield stack, base


async def next_data(reader: SseReader) -> dict[str, Any]:
    """The next data message, skipping control events other than those a test awaits."""
    while True:
        message = await reader.next()
        if "event" not in message:
            data: dict[str, Any] = message["data"]
            return data


async def test_the_feed_names_each_changed_job_as_the_list_shows_it(
    live: tuple[Stack, str],
) -> None:
    stack, base = live
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", f"{base}/jobs/changes/stream") as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(r)
        ready = await reader.next()
        assert ready["event"] == "ready"
        assert ready["data"]["position"] == await stack.read_model.applied_position()

        await stack.create(job_id="ch1", priority=7)
        created = await next_data(reader)
        assert [job["job_id"] for job in created["jobs"]] == ["ch1"]
        assert created["jobs"][0]["status"] == "queued"
        assert created["jobs"][0]["priority"] == 7
        assert created["position"] >= (await stack.store.last_position())

        await stack.start("ch1")
        await stack.progress("ch1", 12)
        while (job := (await next_data(reader))["jobs"][0])["progress"] is None:
            assert job["status"] in {"scheduled", "running"}
        assert (job["status"], job["progress"]["step"]) == ("running", 12)
        listed = (await stack.client.get(stack.url("/jobs"))).json()["items"][0]
        assert job == listed

        await stack.send(c.StopJob(job_id="ch1"))
        await stack.send(c.ReportStopped(job_id="ch1", attempt=1, runner_id="runner-1"))
        while (job := (await next_data(reader))["jobs"][0])["status"] != "stopped":
            assert job["status"] == "stopping"
        assert (await client.delete(f"{base}/jobs/ch1")).status_code == 204
        assert await next_data(reader) == {
            "jobs": [],
            "deleted": ["ch1"],
            "position": await stack.store.last_position(),
        }
        assert (await reader.next(comments=True))["comment"] == "keepalive"


async def test_a_burst_past_the_bound_asks_for_a_reload(
    live: tuple[Stack, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, base = live
    monkeypatch.setattr(changes, "MAX_PENDING", 2)
    monkeypatch.setattr(changes, "COALESCE_S", 1.0)
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", f"{base}/jobs/changes/stream") as r,
    ):
        reader = SseReader(r)
        assert (await reader.next())["event"] == "ready"
        spec = JobSpec(data_path="d", model_path="m", output_dir="o")
        for n in range(3):
            await stack.commands.send(c.SubmitJob(job_id=f"b{n}", spec=spec))
        reset = await reader.next()
        assert reset["event"] == "reset"
        assert "over 2 jobs" in reset["data"]["reason"]
        await stack.create(job_id="after")
        assert [job["job_id"] for job in (await next_data(reader))["jobs"]] == ["after"]


async def messages_of(stream: AsyncIterator[ServerSentEventMessage]) -> AsyncIterator[Any]:
    async for message in stream:
        if message.comment is None:
            yield message.event, msgspec.json.decode(str(message.data))


async def submit_owned(stack: Stack, job_id: str, owner: str | None) -> None:
    spec = JobSpec(data_path="d", model_path="m", output_dir=job_id, owner=owner)
    await stack.send(c.SubmitJob(job_id=job_id, spec=spec))


async def test_a_user_is_told_only_of_own_jobs_and_an_owner_filter_narrows(
    tmp_path: Path,
) -> None:
    async with read_model_of("memory") as model, running_stack(tmp_path, model) as (stack, _):
        bob = Principal(role="user", key_id="key-bob", owner="bob")
        admin = Principal(role="admin", key_id="key-admin", owner="ops")
        feeds = {
            "bob": messages_of(follow_job_changes(stack.deps, bob, owner=None)),
            "bob-asks-alice": messages_of(follow_job_changes(stack.deps, bob, owner="alice")),
            "admin-alice": messages_of(follow_job_changes(stack.deps, admin, owner="alice")),
        }
        for feed in feeds.values():
            assert (await anext(feed))[0] == "ready"
        seen: dict[str, list[str]] = {name: [] for name in feeds}

        async def collect(name: str) -> None:
            async for _, data in feeds[name]:
                seen[name] += [job["job_id"] for job in data["jobs"]] + data["deleted"]

        tasks = [asyncio.create_task(collect(name)) for name in feeds]
        await submit_owned(stack, "alice-1", "alice")
        await submit_owned(stack, "bob-1", "bob")
        await submit_owned(stack, "nobodys", None)
        await wait_for(
            lambda: asyncio.sleep(0, "bob-1" in seen["bob"] and "alice-1" in seen["admin-alice"]),
            what="both feeds to tell of the jobs",
        )
        await asyncio.sleep(3 * changes.COALESCE_S)  # anything else would have arrived by now
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for feed in feeds.values():
            await feed.aclose()
        assert set(seen["bob"]) == {"bob-1"}
        assert seen["bob-asks-alice"] == []
        assert set(seen["admin-alice"]) == {"alice-1"}


async def test_without_a_live_feed_or_after_losing_it_the_stream_says_poll(
    tmp_path: Path,
) -> None:
    async with read_model_of("memory") as model, running_stack(tmp_path, model) as (stack, _):
        operator = Principal(role="admin")
        bare = dataclasses.replace(stack.deps, subscribe=None)
        assert [m async for m in messages_of(follow_job_changes(bare, operator, owner=None))] == [
            ("end", {"reason": "this API has no live feed; poll GET /jobs"})
        ]

        real = stack.deps.subscribe
        assert real is not None

        async def failing(subject: str) -> AsyncIterator[bytes]:
            """The real subscription, dropped by a connection error after one message."""
            async for data in real(subject):
                yield data
                raise ConnectionError("nats connection lost")

        flaky = dataclasses.replace(stack.deps, subscribe=failing)
        feed = messages_of(follow_job_changes(flaky, operator, owner=None))
        assert (await anext(feed))[0] == "ready"
        await stack.create(job_id="lost")
        async with asyncio.timeout(10):
            rest = [m async for m in feed]
        assert rest[-1] == ("end", {"reason": "live feed lost; poll GET /jobs"})


async def test_open_feeds_share_one_subscription_and_the_last_one_ends_it(
    tmp_path: Path,
) -> None:
    async with read_model_of("memory") as model, running_stack(tmp_path, model) as (stack, _):

        def listening() -> int:
            return sum(1 for sub in stack.nc._subs.values() if sub.subject == changes.JOB_EVENTS)

        operator = Principal(role="admin")
        feeds = [messages_of(follow_job_changes(stack.deps, operator, owner=None)) for _ in "abc"]
        for feed in feeds:
            assert (await anext(feed))[0] == "ready"
        await wait_for(lambda: asyncio.sleep(0, listening() == 1), what="one subscription")
        reads = [asyncio.ensure_future(anext(feed)) for feed in feeds]
        await stack.create(job_id="shared")
        async with asyncio.timeout(10):
            for read in reads:
                _, data = await read
                assert [job["job_id"] for job in data["jobs"]] == ["shared"]
        await feeds[0].aclose()
        await feeds[1].aclose()
        assert listening() == 1  # the third feed still listens
        await feeds[2].aclose()
        await wait_for(lambda: asyncio.sleep(0, listening() == 0), what="the last feed to end it")


async def test_a_feed_opened_while_the_last_one_closes_stays_live() -> None:
    """A dashboard that changes its filter closes one feed and opens another; when the
    server ends the old listener just as the new feed joins, the new feed stays live."""
    subscriptions: list[str] = []

    async def subscribe(subject: str) -> AsyncIterator[bytes]:
        subscriptions.append(subject)
        while True:
            await asyncio.sleep(3600)
            yield b"{}"

    hub = changes._Hub(subscribe)
    first = hub.join()
    await wait_for(lambda: asyncio.sleep(0, len(subscriptions) == 1), what="the listener")
    leaving = asyncio.ensure_future(hub.leave(first))
    await asyncio.sleep(0)  # the old listener is cancelled, its cleanup not yet run
    second = hub.join()
    await leaving
    await wait_for(lambda: asyncio.sleep(0, len(subscriptions) == 2), what="a new listener")
    assert not second.lost
    assert not second.wake.is_set()
    await hub.leave(second)


async def test_a_job_called_changes_keeps_its_routes(memory_stack: Stack) -> None:
    await memory_stack.create(job_id="changes")
    for path in ("", "/status", "/logs", "/events", "/progress"):
        response = await memory_stack.client.get(memory_stack.url(f"/jobs/changes{path}"))
        assert response.status_code == 200, (path, response.text)
    assert (await memory_stack.client.post(memory_stack.url("/jobs/changes/stop"))).is_success
