"""Watching a NATS KV bucket for as long as a process lives.

A watch ends when the server restarts or the connection drops; every consumer of a bucket
would otherwise repeat the same re-watch loop, so it lives here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.js.kv import KeyValue

_log = logging.getLogger(__name__)


async def watch_bucket(
    nc: Client,
    bucket: str,
    on_entry: Callable[[KeyValue.Entry], Awaitable[None]],
    *,
    on_loaded: Callable[[], None] | None = None,
) -> None:
    """Call ``on_entry`` for every current value and every change, forever; ``on_loaded``
    once all values present at (re)watch time have been delivered. Runs until cancelled."""
    delay = 0.2
    while True:
        watcher = None
        try:
            kv = await nc.jetstream().key_value(bucket)
            watcher = await kv.watchall()
            async for entry in watcher:
                if entry is None:
                    if on_loaded is not None:
                        on_loaded()
                    continue
                await on_entry(entry)
                delay = 0.2
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.warning("watching %s failed (%r); watching again", bucket, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        finally:
            if watcher is not None:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]
