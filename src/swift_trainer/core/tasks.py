"""Cancelling a background task for sure, and letting go of a subscription at stop.

On Python 3.11, ``asyncio.wait_for`` (used inside nats-py's request and fetch, and by our
own loops) can swallow a cancellation that arrives just as the awaited thing finishes; a
loop that then goes on waiting would hang whoever awaits it after ``cancel()``. So the
cancellation is repeated until the task is really done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol, cast

_log = logging.getLogger(__name__)


async def cancel_and_wait(
    task: asyncio.Task[object] | asyncio.Task[None], retry_s: float = 1.0
) -> None:
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry_s)
    with contextlib.suppress(asyncio.CancelledError):
        error = task.exception()
        if error is not None:
            _log.warning("task %s ended with %r", task.get_name(), error)


class _Unsubscribable(Protocol):
    async def unsubscribe(self) -> None: ...


async def unsubscribe_quietly(subscription: object | None) -> None:
    """At stop: a connection already closed cannot unsubscribe, and need not."""
    if subscription is None:
        return
    try:
        await cast("_Unsubscribable", subscription).unsubscribe()
    except Exception as exc:
        _log.debug("unsubscribe at stop failed: %r", exc)
