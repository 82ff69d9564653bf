"""Stopping background work: a swallowed cancellation, a subscription that cannot go."""

from __future__ import annotations

import asyncio
import logging

import pytest

from swift_trainer.core.tasks import cancel_and_wait, unsubscribe_quietly


async def test_a_task_that_swallows_one_cancellation_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 1:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task, retry_s=0.05), timeout=5)
    assert task.cancelled() and swallowed == 2


async def test_a_task_that_failed_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(broken(), name="broken-task")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING):
        await cancel_and_wait(task)
    assert "broken-task" in caplog.text and "boom" in caplog.text


class _Gone:
    def __init__(self) -> None:
        self.calls = 0

    async def unsubscribe(self) -> None:
        self.calls += 1
        raise ConnectionError("connection closed")


async def test_unsubscribing_at_stop_survives_a_closed_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gone = _Gone()
    with caplog.at_level(logging.DEBUG, logger="swift_trainer.core.tasks"):
        await unsubscribe_quietly(gone)
        await unsubscribe_quietly(None)
    assert gone.calls == 1
    assert "connection closed" in caplog.text
