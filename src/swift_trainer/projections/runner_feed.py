"""Runner heartbeats from the NATS KV bucket into the read model, for ``GET /gpus``.

The scheduler reads the same bucket for placement; this copy only serves the API. A
heartbeat is stored as the runner put it (its JSON), with the time it was seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from nats.aio.client import Client
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from ..bus import subjects
from ..bus.kv_watch import watch_bucket
from ..core.inventory import decode_heartbeat
from .read_models.interface import ReadModel

_log = logging.getLogger(__name__)


class RunnerFeed:
    def __init__(self, nc: Client, read_model: ReadModel) -> None:
        self.nc = nc
        self.read_model = read_model
        self.malformed = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="runner-feed")

    async def _run(self) -> None:
        await watch_bucket(self.nc, subjects.RUNNERS_BUCKET, self._on_entry)

    async def _on_entry(self, entry: KeyValue.Entry) -> None:
        if entry.operation in (KV_DEL, KV_PURGE):
            await self.read_model.remove_runner(entry.key)
            return
        try:
            heartbeat = decode_heartbeat(entry.value or b"")
        except msgspec.MsgspecError as exc:
            self.malformed += 1
            _log.warning("skipped a malformed heartbeat %r: %s", entry.key, exc)
            return
        await self.read_model.put_runner_snapshot(
            heartbeat.runner_id,
            entry.value or b"",
            heartbeat.at,
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
