"""SSE follow streams, over a real HTTP server (uvicorn).

In-process ASGI transports buffer a response until it ends, and a follow stream does not end
on its own, so these tests read the streams over a socket the way a client does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from litestar import Litestar

from swift_trainer.bus.embedded import free_port
from swift_trainer.projections.read_models import LogLine

from .conftest import PREFIX, Stack, read_model_of, running_stack, wait_for


@contextlib.asynccontextmanager
async def serving(app: Litestar) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers only a flag
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}{PREFIX}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def live(backend: str, tmp_path: Path) -> AsyncIterator[tuple[Stack, str]]:
    async with (
        read_model_of(backend) as model,
        running_stack(tmp_path, model, stream_heartbeat_s=0.5) as (stack, app),
        serving(app) as base,
    ):
        yield stack, base


class SseReader:
    """Parses ``text/event-stream`` into dicts: ``event``, ``id``, ``data`` (JSON), ``comment``."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()

    async def next(self, *, timeout: float = 10.0, comments: bool = False) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            message: dict[str, Any] = {}
            async for line in self.lines:
                if not line:
                    if message and (comments or set(message) != {"comment"}):
                        return message
                    message = {}
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "":
                    message["comment"] = value
                elif field == "data":
                    message["data"] = json.loads(value)
                else:
                    message[field] = value
        raise AssertionError("the stream ended")

    async def data(self, count: int) -> list[Any]:
        return [(await self.next())["data"] for _ in range(count)]


async def test_logs_follow_sends_the_tail_then_new_lines(live: tuple[Stack, str]) -> None:
    stack, base = live
    await stack.create(job_id="lg")
    await stack.read_model.append_logs("lg", [LogLine(seq=i, text=f"l{i}") for i in (1, 2, 3)])
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", f"{base}/jobs/lg/logs", params={"follow": "true", "limit": 2}) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(r)
        first = await reader.next()
        assert (first["id"], first["data"]["text"]) == ("2", "l2")
        assert (await reader.next())["data"]["text"] == "l3"
        await stack.read_model.append_logs(
            "lg", [LogLine(seq=4, text="l4"), LogLine(seq=5, text="l5")]
        )
        assert [line["text"] for line in await reader.data(2)] == ["l4", "l5"]


async def test_logs_stream_resumes_from_last_event_id_and_ends_after_the_job(
    live: tuple[Stack, str],
) -> None:
    stack, base = live
    await stack.create(job_id="fin")
    await stack.start("fin")
    await stack.read_model.append_logs("fin", [LogLine(seq=i, text=f"l{i}") for i in range(1, 6)])
    await stack.succeed("fin")
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", f"{base}/jobs/fin/logs/stream", headers={"Last-Event-ID": "3"}) as r,
    ):
        reader = SseReader(r)
        assert [line["seq"] for line in await reader.data(2)] == [4, 5]
        end = await reader.next()
        assert end["event"] == "end"


async def test_events_follow_replays_then_streams_new_events(live: tuple[Stack, str]) -> None:
    stack, base = live
    await stack.create(job_id="ev")
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", f"{base}/jobs/ev/events", params={"follow": "true"}) as r,
    ):
        assert r.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(r)
        history = await reader.data(2)
        assert [event["type"] for event in history] == ["JobSubmitted", "JobQueued"]
        stopped = await client.post(f"{base}/jobs/ev/stop")
        assert stopped.status_code == 200
        live_event = await reader.next()
        assert live_event["data"]["type"] == "JobStopped"
        assert int(live_event["id"]) == live_event["data"]["position"] > history[-1]["position"]
        assert (await client.delete(f"{base}/jobs/ev")).status_code == 204
        while (message := await reader.next()).get("event") != "end":
            assert message["data"]["type"] == "JobDeleted"


async def test_events_stream_resumes_after_the_last_event_id(live: tuple[Stack, str]) -> None:
    stack, base = live
    await stack.create(job_id="re")
    events = (await stack.client.get(stack.url("/jobs/re/events"))).json()["events"]
    first = events[0]["position"]
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream(
            "GET", f"{base}/jobs/re/events/stream", headers={"Last-Event-ID": str(first)}
        ) as r,
    ):
        assert [event["type"] for event in await SseReader(r).data(1)] == ["JobQueued"]


async def test_progress_stream_follows_the_job_to_its_end(live: tuple[Stack, str]) -> None:
    stack, base = live
    await stack.create(job_id="pg")
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", f"{base}/jobs/pg/progress/stream") as r,
    ):
        assert r.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(r)
        assert (await reader.next())["data"]["status"] == "queued"
        await stack.start("pg")
        await stack.progress("pg", 10)
        while (update := (await reader.next())["data"])["step"] != 10:
            assert update["status"] in {"scheduled", "running"}
        assert update["percent"] == 10.0
        await stack.succeed("pg")
        final = (await reader.next())["data"]
        assert final["status"] == "succeeded"
        assert final["percent"] == 100.0
        assert (await reader.next())["event"] == "end"


async def test_progress_follow_flag_and_keepalives(live: tuple[Stack, str]) -> None:
    stack, base = live
    await stack.create(job_id="ka")
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", f"{base}/jobs/ka/progress", params={"follow": "true"}) as r,
    ):
        assert r.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(r)
        assert (await reader.next())["data"]["job_id"] == "ka"
        assert (await reader.next(comments=True))["comment"] == "keepalive"


async def test_following_an_unknown_job_is_a_404_problem(live: tuple[Stack, str]) -> None:
    _, base = live
    async with httpx.AsyncClient(timeout=10) as client:
        for path in ("logs?follow=true", "events/stream", "progress/stream"):
            response = await client.get(f"{base}/jobs/ghost/{path}")
            assert response.status_code == 404
            assert response.headers["content-type"].startswith("application/problem+json")


async def test_streams_survive_a_client_that_goes_away(tmp_path: Path) -> None:
    async with (
        read_model_of("memory") as model,
        running_stack(tmp_path, model) as (stack, app),
        serving(app) as base,
    ):
        await stack.create(job_id="gone")
        baseline = len(stack.nc._subs)
        for path in ("events/stream", "logs/stream", "progress/stream"):
            async with (
                httpx.AsyncClient(timeout=10) as client,
                client.stream("GET", f"{base}/jobs/gone/{path}") as r,
            ):
                if path != "logs/stream":  # no lines yet: nothing to read before leaving
                    await SseReader(r).next()

                async def subscribed() -> bool:
                    return len(stack.nc._subs) > baseline

                await wait_for(subscribed, what=f"{path} to subscribe for wake-ups")

        async def unsubscribed() -> bool:
            return len(stack.nc._subs) == baseline

        await wait_for(unsubscribed, what="the streams' NATS subscriptions to close")
        health = await stack.client.get(stack.url("/health"))
        assert health.status_code == 200
