"""Starting while a cluster elects a leader: transient JetStream answers are waited out,
anything else fails at once."""

from __future__ import annotations

import pytest
from nats.js.errors import NoStreamResponseError, NotFoundError

from swift_trainer.bus.connection import retry_transient


async def test_transient_answers_are_retried_until_the_call_succeeds() -> None:
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise NoStreamResponseError
        return "ready"

    assert await retry_transient(call, "test") == "ready"
    assert calls == 3


async def test_a_missing_stream_fails_at_once() -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise NotFoundError

    with pytest.raises(NotFoundError):
        await retry_transient(call, "test")
    assert calls == 1


async def test_patience_runs_out() -> None:
    async def call() -> None:
        raise NoStreamResponseError

    with pytest.raises(NoStreamResponseError):
        await retry_transient(call, "test", patience_s=0.5)
