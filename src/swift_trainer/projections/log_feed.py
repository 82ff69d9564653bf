"""Training output from the LOGS stream into the read model's per-job log buffers.

Logs are not events: they are bounded by the LOGS stream's size and age limits and by the
read model's per-job cap, and they are not replayed from the event store. The consumer is
ordered and replays what the stream still holds when it starts, which is harmless: the
read model drops a line whose ``seq`` it already keeps for the job.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from ..bus import subjects
from ..bus.connection import retry_transient
from ..bus.messages import decode_log_payload
from ..core.tasks import cancel_and_wait, unsubscribe_quietly
from .read_models.interface import ReadModel
from .read_models.views import LogLine

_log = logging.getLogger(__name__)


class LogFeed:
    def __init__(self, nc: Client, read_model: ReadModel, *, max_batch: int = 1000) -> None:
        self.nc = nc
        self.read_model = read_model
        self.max_batch = max_batch
        self.malformed = 0
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._sub: object | None = None

    async def start(self) -> None:
        async def on_message(msg: Msg) -> None:
            await self._queue.put(msg)

        self._sub = await retry_transient(
            lambda: self.nc.jetstream().subscribe(
                subjects.LOGS_ALL,
                stream=subjects.LOGS_STREAM,
                cb=on_message,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL,
                idle_heartbeat=5.0,
                pending_msgs_limit=1_000_000,
            ),
            "log feed",
        )
        self._task = asyncio.create_task(self._run(), name="log-feed")

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            by_job: dict[str, list[LogLine]] = defaultdict(list)
            for msg in batch:
                try:
                    messages = decode_log_payload(msg.data)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    self.malformed += 1
                    _log.warning("skipped a malformed log message on %s: %s", msg.subject, exc)
                    continue
                for message in messages:
                    by_job[message.job_id].append(
                        LogLine(
                            seq=message.seq,
                            text=message.line,
                            at=message.at,
                            attempt=message.attempt,
                            stream=message.stream,
                            rank=message.rank,
                        ),
                    )
            for job_id, lines in by_job.items():
                await self._append(job_id, lines)

    async def _append(self, job_id: str, lines: list[LogLine]) -> None:
        delay = 0.1
        while True:
            try:
                await self.read_model.append_logs(job_id, lines)
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("storing %d log lines of %s failed; retrying", len(lines), job_id)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                return

    async def stop(self) -> None:
        await unsubscribe_quietly(self._sub)
        if self._task is not None:
            await cancel_and_wait(self._task)
