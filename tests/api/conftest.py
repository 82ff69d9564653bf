"""The API on a real path: nats-server, SQLite event store, command handler, outbox relay,
an event feed into the read model (memory or Redis), and the app on top.

Nothing is faked between the HTTP request and the read model, so a test that writes waits
for the read model to catch up with the store (``Stack.settled``) before it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from litestar import Litestar
from nats.aio.client import Client

from swift_trainer.api import (
    ApiDeps,
    combine_checks,
    create_app,
    event_store_check,
    nats_check,
    nats_subscriber,
    read_model_check,
)
from swift_trainer.api.deps import WebhookAccess
from swift_trainer.bus.command_client import CommandClient
from swift_trainer.bus.command_handler import CommandHandler
from swift_trainer.bus.connection import connect, provision
from swift_trainer.bus.embedded import EmbeddedNatsServer
from swift_trainer.bus.feed import EventFeed
from swift_trainer.bus.file_store import FileStore
from swift_trainer.bus.relay import OutboxRelay, RelayNudge
from swift_trainer.core import commands as c
from swift_trainer.core.sqlstore import SqlEventStore, open_event_store
from swift_trainer.projections.read_models import (
    JobSummary,
    MemoryReadModel,
    ReadModel,
    RedisReadModel,
)
from swift_trainer.projections.usage_view import UsageView

REDIS_URL = os.environ.get("SWIFT_TRAINER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = "/api/v1/training"

T = TypeVar("T")


def _require_services() -> bool:
    return os.environ.get("REQUIRE_SERVICES", "").strip().lower() in {"1", "true", "yes"}


@functools.cache
def _redis_unreachable() -> str | None:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"Redis at {REDIS_URL} is not reachable ({exc!r})"
    finally:
        client.close()
    return None


def require_redis() -> None:
    reason = _redis_unreachable()
    if reason is None:
        return
    if _require_services():
        pytest.fail(f"{reason}, and REQUIRE_SERVICES=1 requires it")
    pytest.skip(f"{reason}; set REQUIRE_SERVICES=1 to make this a failure")


async def wait_for(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 10.0,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns something truthy (not None/False); fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Stack:
    client: httpx.AsyncClient
    commands: CommandClient
    read_model: ReadModel
    store: SqlEventStore
    nc: Client
    deps: ApiDeps
    handler: CommandHandler
    attempts: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def url(path: str) -> str:
        return PREFIX + path

    async def settled(self) -> None:
        """The read model has applied everything the store holds."""
        target = await self.store.last_position()

        async def probe() -> bool:
            return await self.read_model.applied_position() >= target

        await wait_for(probe, what=f"the read model to reach position {target}")

    async def job(self, job_id: str) -> JobSummary:
        await self.settled()
        summary = await self.read_model.get_job(job_id)
        assert summary is not None, f"job {job_id} is not in the read model"
        return summary

    async def create(self, **fields: Any) -> str:
        body = {"data_path": "AI-ModelScope/coco#200", "model_path": "Qwen/Qwen2.5-0.5B", **fields}
        response = await self.client.post(self.url("/jobs"), json=body)
        assert response.status_code == 201, response.text
        job_id: str = response.json()["job_id"]
        await self.settled()
        return job_id

    async def send(self, command: c.AnyCommand) -> None:
        reply = await self.commands.send(command)
        assert reply.ok, reply
        await self.settled()

    # --- acting as the scheduler and a runner (the commands they really send) -------------

    async def schedule(
        self, job_id: str, *, runner: str = "runner-1", gpus: tuple[int, ...] = (0,)
    ) -> int:
        attempt = self.attempts.get(job_id, 0) + 1
        self.attempts[job_id] = attempt
        await self.send(
            c.ScheduleJob(job_id=job_id, attempt=attempt, runner_id=runner, gpu_ids=gpus)
        )
        return attempt

    async def start(
        self, job_id: str, *, runner: str = "runner-1", gpus: tuple[int, ...] = (0,)
    ) -> int:
        attempt = await self.schedule(job_id, runner=runner, gpus=gpus)
        await self.send(
            c.ReportStarted(
                job_id=job_id,
                attempt=attempt,
                runner_id=runner,
                pid=4242,
                command=("swift", "sft"),
            )
        )
        return attempt

    async def progress(
        self, job_id: str, step: int, *, max_steps: int = 100, runner: str = "runner-1"
    ) -> None:
        await self.send(
            c.ReportProgress(
                job_id=job_id,
                attempt=self.attempts[job_id],
                runner_id=runner,
                step=step,
                max_steps=max_steps,
                loss=2.0 / step,
                learning_rate=1e-4,
                epoch=step / max_steps,
                elapsed_s=10.0 * step,
                remaining_s=10.0 * (max_steps - step),
            )
        )

    async def checkpoint(self, job_id: str, step: int, *, runner: str = "runner-1") -> str:
        path = f"output/{job_id}/checkpoint-{step}"
        await self.send(
            c.ReportCheckpoint(
                job_id=job_id,
                attempt=self.attempts[job_id],
                runner_id=runner,
                step=step,
                path=path,
            )
        )
        return path

    async def succeed(self, job_id: str, *, runner: str = "runner-1") -> None:
        await self.send(
            c.ReportSucceeded(job_id=job_id, attempt=self.attempts[job_id], runner_id=runner)
        )


@contextlib.asynccontextmanager
async def running_stack(
    tmp_path: Path,
    read_model: ReadModel,
    **overrides: Any,
) -> AsyncIterator[tuple[Stack, Litestar]]:
    """Everything from nats-server to the app; ``overrides`` replace ``ApiDeps`` fields."""
    server = EmbeddedNatsServer(tmp_path / "nats")
    await server.start()
    nc = await connect(server.url, name="api-test")
    store = open_event_store(f"sqlite+aiosqlite:///{tmp_path / 'events.db'}")
    relay = OutboxRelay(store, nc)
    handler = CommandHandler(store, after_append=[relay.offer_appended, RelayNudge(nc)])
    feed = EventFeed(nc, read_model.apply_many, name="api-test")
    try:
        await provision(nc.jetstream())
        await store.setup()
        await handler.start(nc)
        await relay.start()
        await feed.start()
        commands = CommandClient(nc, timeout=5, actor="test")
        fields: dict[str, Any] = {
            "commands": commands,
            "read_model": read_model,
            "subscribe": nats_subscriber(nc),
            "readiness": combine_checks(
                nats=nats_check(nc),
                event_store=event_store_check(store),
                read_model=read_model_check(read_model),
            ),
            "output_root": str(tmp_path / "output"),
            "files": FileStore(nc.jetstream()),
            "usage": UsageView(store),
            "webhooks": WebhookAccess(store, b"test-signing-key"),
            "stream_poll_s": 0.2,
            "stream_end_grace_s": 0.0,
            **overrides,
        }
        deps = ApiDeps(**fields)
        app = create_app(deps)
        # Litestar's AsyncTestClient runs the app on its own thread and event loop, where the
        # loop-bound NATS client cannot work; httpx's ASGI transport runs it on this loop.
        # (No lifespan: its only hook primes psutil's CPU counter.)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield (
                Stack(
                    client=client,
                    commands=CommandClient(nc, timeout=5, actor="runner"),
                    read_model=read_model,
                    store=store,
                    nc=nc,
                    deps=deps,
                    handler=handler,
                ),
                app,
            )
    finally:
        await feed.stop()
        await relay.stop()
        await handler.stop()
        await nc.close()
        await store.close()
        await server.stop()


@contextlib.asynccontextmanager
async def read_model_of(kind: str) -> AsyncIterator[ReadModel]:
    if kind == "memory":
        yield MemoryReadModel()
        return
    require_redis()
    model = RedisReadModel.from_url(REDIS_URL, prefix=f"test-api-{uuid.uuid4().hex[:12]}:")
    try:
        yield model
    finally:
        await model.wipe()
        await model.close()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def stack(backend: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with read_model_of(backend) as model, running_stack(tmp_path, model) as (built, _):
        yield built


@pytest.fixture
async def memory_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """For tests about the HTTP layer itself, where the backend makes no difference."""
    async with read_model_of("memory") as model, running_stack(tmp_path, model) as (built, _):
        yield built
