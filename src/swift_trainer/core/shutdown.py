"""Waiting for the end of a long-running process: SIGINT/SIGTERM, or a part giving up.

Every entry point (``up``, ``handler``, ``api``, ``scheduler``, ``runner``) runs until one
of these, then stops its parts in order; this is the one place that waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal


async def wait_for_shutdown(*also: asyncio.Event) -> None:
    """Return on SIGINT or SIGTERM, or as soon as any of ``also`` is set."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    waiters = [asyncio.create_task(event.wait()) for event in (stop, *also)]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
