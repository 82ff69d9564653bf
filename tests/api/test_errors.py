"""Problem details for every error class, and the app's wiring options."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import pytest

from swift_trainer.api import ApiDeps, create_app
from swift_trainer.bus.messages import CommandReply
from swift_trainer.core.commands import AnyCommand
from swift_trainer.projections.read_models import MemoryReadModel, ReadModel, RedisReadModel

from .conftest import Stack
from .test_jobs import BODY, problem


class _NoCommands:
    async def send(
        self, command: AnyCommand, *, command_id: str | None = None, actor: str | None = None
    ) -> CommandReply:
        raise AssertionError("this test sends no commands")


class _BrokenReadModel:
    """Every query fails the way a bug would: the API must still answer with a problem."""

    def __getattr__(self, name: str) -> Any:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"{name} exploded")

        return fail


async def _client(deps: ApiDeps, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(deps, **options)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
async def broken_client() -> AsyncIterator[httpx.AsyncClient]:
    deps = ApiDeps(commands=_NoCommands(), read_model=cast(ReadModel, _BrokenReadModel()))
    async for client in _client(deps):
        yield client


@pytest.fixture
async def redis_down_client() -> AsyncIterator[httpx.AsyncClient]:
    model = RedisReadModel.from_url("redis://127.0.0.1:1/0", prefix="unreachable:")
    try:
        async for client in _client(ApiDeps(commands=_NoCommands(), read_model=model)):
            yield client
    finally:
        await model.close()


async def test_unknown_routes_and_methods_are_problems(memory_stack: Stack) -> None:
    problem(await memory_stack.client.get("/api/v1/training/nope"), 404, "not_found")
    problem(await memory_stack.client.put(memory_stack.url("/health")), 405, "method_not_allowed")


async def test_a_missing_command_handler_is_a_503_with_retry_after(memory_stack: Stack) -> None:
    await memory_stack.handler.stop()
    response = await memory_stack.client.post(memory_stack.url("/jobs"), json=BODY)
    body = problem(response, 503, "command_unavailable")
    assert response.headers["retry-after"] == "2"
    assert "retry" in body["detail"]


async def test_an_unexpected_error_is_a_logged_500_problem(
    broken_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="swift_trainer.api.problems"):
        response = await broken_client.get("/api/v1/training/jobs/x/status")
    body = problem(response, 500, "internal_error")
    assert "exploded" not in body["detail"], "internals stay in the log"
    assert any("exploded" in (r.exc_text or "") for r in caplog.records)


async def test_an_unreachable_redis_is_a_503(redis_down_client: httpx.AsyncClient) -> None:
    response = await redis_down_client.get("/api/v1/training/jobs/x/status")
    problem(response, 503, "read_model_unavailable")
    assert response.headers["retry-after"] == "2"
    ready = await redis_down_client.get("/api/v1/training/health/ready")
    body = problem(ready, 503, "not_ready")
    assert body["checks"]["read_model"] != True  # noqa: E712 - a reason string, not False


@pytest.mark.parametrize(
    ("prefix", "health"),
    [
        ("/custom", "/custom/training/health"),
        ("/custom/", "/custom/training/health"),
        ("", "/training/health"),
        ("/a/b", "/a/b/training/health"),
    ],
)
async def test_the_api_prefix_is_configurable(prefix: str, health: str) -> None:
    deps = ApiDeps(commands=_NoCommands(), read_model=MemoryReadModel())
    async for client in _client(deps, api_prefix=prefix):
        assert (await client.get(health)).json() == {"status": "ok"}
        assert (await client.get("/api/v1/training/health")).status_code == 404
