"""Training output onto the LOGS stream: the lines read together in one message, pipelined.

A line, on subject ``st.logs.<job_id>`` (``subjects.log_subject``)::

    {"job_id": "j1", "attempt": 2, "seq": 1767225600123456, "stream": "stderr",
     "line": "[INFO:swift] Saving model checkpoint to ...", "at": "2026-01-01T00:00:00.123456Z",
     "runner_id": "gpu-host-1"}

plus ``"export_id"`` for the output of a ``swift export`` (``attempt`` is then 0) and
``"truncated": true`` when the line was cut to ``MAX_LINE_CHARS``. A consumer builds the
read model's ``LogLine(seq=seq, text=line, at=at, attempt=attempt, stream=stream)``.
Several lines of a job read in one go travel as one ``LogBatch``, ``{"lines": [line, ...]}``
(at most ``MAX_BATCH_LINES`` lines and ``MAX_BATCH_BYTES``): JetStream then writes, and with
``sync_interval: always`` fsyncs, once per batch, which is what lets a job log 1,000 lines a
second (one fsync per line topped out near that on a VM disk). ``decode_log_payload`` reads
either shape.

Why ``seq`` is what it is: the read model keeps a job's lines ordered by ``seq`` and drops a
line at or below the highest one stored (a redelivery), so ``seq`` must only grow, over
every attempt, runner restart and runner the job ever has. It is the time the runner read
the line, in microseconds since the Unix epoch, bumped to one more than the job's previous
``seq`` when the clock has not moved on (``max(now_us, last + 1)``). ``last`` starts, once
per job and runner process, from the newest message the LOGS stream holds for the job, so a
job that moves to another host (or a runner that restarts) continues above what was
published before, whatever the hosts' clocks say. Microseconds stay below 2**53 until the
year 2255, so ``seq`` is exact in JSON numbers, Redis sorted-set scores and JavaScript.

``Nats-Msg-Id`` is ``<job_id>:<seq>`` (``<job_id>:<first seq>-<last seq>`` for a batch): a
publish retried after a lost ack is stored once.
What is lost in a crash: lines read but still queued in memory when the runner is killed
are not published (they stay in the files under ``<output_dir>/runner-logs/``); lines the
supervisor reads again after a restart (those after its last saved offsets) are published
again with new ``seq`` values. Duplicates rather than gaps, and the files stay complete.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Final, Literal

import msgspec
from nats.aio.client import Client
from nats.js.api import Header, PubAck
from nats.js.errors import NotFoundError

from ..bus import subjects
from ..bus.messages import LogMessage, decode_log_payload
from ..core.tasks import cancel_and_wait

_log = logging.getLogger(__name__)

#: Longer lines are cut (JSON escaping may grow a line up to 6x; LOGS takes 64 KiB).
MAX_LINE_CHARS: Final = 4096
#: A ``LogBatch`` holds at most this many lines and encoded bytes (LOGS takes 64 KiB a
#: message); at 1,000 lines a second a batch every 50 ms holds about 50.
MAX_BATCH_LINES: Final = 200
MAX_BATCH_BYTES: Final = 48 * 1024

Stream = Literal["stdout", "stderr"]
#: A job with no line for this long is forgotten by the seq clock (it re-seeds if it logs again).
IDLE_FORGET_S: Final = 600.0


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LogMessage)


def encode_log_message(message: LogMessage) -> bytes:
    return _encoder.encode(message)


def decode_log_message(data: bytes) -> LogMessage:
    return _decoder.decode(data)


def _payload(parts: list[bytes]) -> bytes:
    """One encoded line as itself, several as the ``LogBatch`` JSON they make."""
    if len(parts) == 1:
        return parts[0]
    return b'{"lines":[' + b",".join(parts) + b"]}"


def clip_line(line: str) -> tuple[str, bool]:
    if len(line) <= MAX_LINE_CHARS:
        return line, False
    return line[: MAX_LINE_CHARS - 1] + "\u2026", True


class _Pending(msgspec.Struct):
    job_id: str
    attempt: int
    stream: Stream
    line: str
    truncated: bool
    at_us: int
    export_id: str | None = None
    seq: int = 0
    rank: int | None = None


class SeqClock:
    """``seq`` per job: the read time in microseconds, strictly increasing per job."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def known(self, job_id: str) -> bool:
        return job_id in self._last

    def seed(self, job_id: str, floor: int) -> None:
        self._last[job_id] = max(self._last.get(job_id, 0), floor)

    def next(self, job_id: str, at_us: int) -> int:
        seq = max(at_us, self._last.get(job_id, 0) + 1)
        self._last[job_id] = seq
        return seq

    def forget(self, job_id: str) -> None:
        self._last.pop(job_id, None)


class LogPublisher:
    """Queues lines without blocking the supervisor and publishes them in pipelined batches.

    ``publish`` never waits: a slow or absent NATS must not slow down reading the training
    output (the supervisor also judges the job from it). The queue is bounded; past
    ``max_pending`` lines the oldest are dropped and counted in ``dropped``.
    """

    def __init__(
        self,
        nc: Client,
        runner_id: str,
        *,
        flush_interval_s: float = 0.05,
        max_batch: int = 512,
        max_pending: int = 100_000,
        publish_timeout_s: float = 5.0,
        idle_forget_s: float = IDLE_FORGET_S,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=publish_timeout_s)
        self.runner_id = runner_id
        self.flush_interval_s = flush_interval_s
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.publish_timeout_s = publish_timeout_s
        self.clock = SeqClock()
        #: ``SeqClock`` would otherwise keep every job this runner ever logged for: a job
        #: idle this long with nothing queued is forgotten, and seeded again from the stream
        #: (one read) should it log again, so ``seq`` still only grows.
        self.idle_forget_s = idle_forget_s
        self._last_line: dict[str, float] = {}
        self._last_sweep = time.monotonic()
        self.published = 0
        self.dropped = 0
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"log-publisher-{self.runner_id}")

    def publish(
        self,
        job_id: str,
        attempt: int,
        stream: Stream,
        line: str,
        *,
        export_id: str | None = None,
        rank: int | None = None,
    ) -> None:
        text, truncated = clip_line(line)
        if len(self._queue) >= self.max_pending:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped % 10_000 == 1:
                _log.warning("log queue full: %d lines dropped so far", self.dropped)
        self._last_line[job_id] = time.monotonic()
        self._queue.append(
            _Pending(
                job_id=job_id,
                attempt=attempt,
                stream=stream,
                line=text,
                truncated=truncated,
                at_us=time.time_ns() // 1000,
                export_id=export_id,
                rank=rank,
            ),
        )
        self._idle.clear()
        self._wake.set()

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued line is published; False when the time ran out."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout: float = 2.0) -> None:
        if self._task is None:
            return
        await self.flush(timeout)
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        delay = self.flush_interval_s
        while True:
            if not self._queue:
                self._idle.set()
                await self._wake.wait()
            self._wake.clear()
            try:
                await self._publish_batch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away: keep the lines, try again later
                _log.warning("publishing log lines failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = self.flush_interval_s
            # Let lines accumulate a little: one pipelined batch instead of many tiny ones.
            await asyncio.sleep(self.flush_interval_s)

    async def _seed(self, job_id: str) -> None:
        """Continue above the newest line the stream holds for this job (see module doc)."""
        floor = 0
        try:
            last = await self.js.get_last_msg(subjects.LOGS_STREAM, subjects.log_subject(job_id))
        except NotFoundError:
            last = None
        if last is not None and last.data:
            try:
                floor = max((line.seq for line in decode_log_payload(last.data)), default=0)
            except (msgspec.DecodeError, msgspec.ValidationError):
                floor = 0
        self.clock.seed(job_id, floor)

    async def _publish_batch(self) -> None:
        batch = [self._queue[i] for i in range(min(self.max_batch, len(self._queue)))]
        for job_id in {p.job_id for p in batch if p.seq == 0}:
            if not self.clock.known(job_id):
                await self._seed(job_id)
        for pending in batch:
            if pending.seq == 0:  # kept across a failed try: a retry dedupes by msg id
                pending.seq = self.clock.next(pending.job_id, pending.at_us)
        sent: list[tuple[list[_Pending], asyncio.Future[PubAck]]] = []
        published: set[int] = set()
        try:
            for chunk, payload in self._chunks(batch):
                first, last = chunk[0].seq, chunk[-1].seq
                msg_id = f"{chunk[0].job_id}:{first}" + (f"-{last}" if last != first else "")
                future = await self.js.publish_async(
                    subjects.log_subject(chunk[0].job_id),
                    payload,
                    headers={Header.MSG_ID.value: msg_id},
                )
                sent.append((chunk, future))
            for chunk, future in sent:
                await asyncio.wait_for(future, self.publish_timeout_s)
                published.update(id(pending) for pending in chunk)
        finally:
            for _, future in sent:
                future.cancel()
            self._take_published(batch, published)
            self.published += len(published)
        self._forget_idle()

    def _chunks(self, batch: list[_Pending]) -> Iterator[tuple[list[_Pending], bytes]]:
        """Each job's lines of the batch, in order, as messages within the LOGS limits:
        one line alone as a ``LogMessage``, more as a ``LogBatch``."""
        by_job: dict[str, list[_Pending]] = {}
        for pending in batch:
            by_job.setdefault(pending.job_id, []).append(pending)
        for lines in by_job.values():
            chunk: list[_Pending] = []
            parts: list[bytes] = []
            size = 0
            for pending in lines:
                part = encode_log_message(self._message(pending))
                if chunk and (size + len(part) > MAX_BATCH_BYTES or len(chunk) >= MAX_BATCH_LINES):
                    yield chunk, _payload(parts)
                    chunk, parts, size = [], [], 0
                chunk.append(pending)
                parts.append(part)
                size += len(part) + 1
            if chunk:
                yield chunk, _payload(parts)

    def _take_published(self, batch: list[_Pending], published: set[int]) -> None:
        """Drop the published lines of ``batch`` from the front of the queue, keeping the
        rest there in order (``publish`` may have dropped some of them meanwhile)."""
        if not published:
            return
        in_batch = {id(pending) for pending in batch}
        kept: list[_Pending] = []
        while self._queue and id(self._queue[0]) in in_batch:
            pending = self._queue.popleft()
            if id(pending) not in published:
                kept.append(pending)
        self._queue.extendleft(reversed(kept))

    def _forget_idle(self) -> None:
        """Call ``SeqClock.forget`` for jobs idle ``idle_forget_s`` with no line queued."""
        now = time.monotonic()
        if now - self._last_sweep < self.idle_forget_s / 4:
            return
        self._last_sweep = now
        queued = {pending.job_id for pending in self._queue}
        for job_id, at in list(self._last_line.items()):
            if now - at >= self.idle_forget_s and job_id not in queued:
                del self._last_line[job_id]
                self.clock.forget(job_id)

    def _message(self, pending: _Pending) -> LogMessage:
        return LogMessage(
            job_id=pending.job_id,
            attempt=pending.attempt,
            seq=pending.seq,
            stream=pending.stream,
            line=pending.line,
            at=datetime.fromtimestamp(pending.at_us / 1e6, UTC),
            runner_id=self.runner_id,
            export_id=pending.export_id,
            truncated=pending.truncated,
            rank=pending.rank,
        )
