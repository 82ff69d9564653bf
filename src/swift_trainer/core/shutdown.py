"""Waiting for the end of a long-running process: SIGINT/SIGTERM, or a part giving up.

Every entry point (``up``, ``handler``, ``api``, ``scheduler``, ``runner``) runs until one
of these, then stops its parts in order; this is the one place that waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal


def catch_shutdown_signals() -> asyncio.Event:
    """From now on SIGINT and SIGTERM set the returned event instead of interrupting.

    A process caught this way before it becomes reachable stops in order, with status 0,
    even when the signal comes while it finishes starting.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def wait_for_shutdown(*also: asyncio.Event, stop: asyncio.Event | None = None) -> None:
    """Return on SIGINT or SIGTERM, or as soon as any of ``also`` is set; ``stop`` is the
    event of signals caught earlier (``catch_shutdown_signals``)."""
    stop = stop if stop is not None else catch_shutdown_signals()
    waiters = [asyncio.create_task(event.wait()) for event in (stop, *also)]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
