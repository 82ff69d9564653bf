"""Cancelling a background task for sure.

On Python 3.11, ``asyncio.wait_for`` (used inside nats-py's request and fetch, and by our
own loops) can swallow a cancellation that arrives just as the awaited thing finishes; a
loop that then goes on waiting would hang whoever awaits it after ``cancel()``. So the
cancellation is repeated until the task is really done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

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
