"""The Redis read model: what the API reads in the distributed mode.

Key layout, every key under a configurable prefix (default ``swift-trainer:``)::

    applied                   STRING  global position of the last applied event
    processor                 STRING  queue-processor state (JSON)
    job:{id}                  STRING  JobSummary (JSON): the one GET behind GET /jobs/{id}/status
    fold:{id}                 STRING  JobFold (JSON): what the projector needs for the next event
    idx:all                   ZSET    job ids scored by submission position
    idx:s:{status}            ZSET    the same, per status (ZCARD gives the status counts)
    idx:p:{priority}          ZSET    the same, per priority
    idx:sp:{status}:{prio}    ZSET    the same, per status and priority
    idx:o:{owner}:{index}     ZSET    each of the four above, per owner (owned jobs only)
    events:{id}               ZSET    EventLogEntry (JSON) scored by global position
    metrics:{id}              LIST    MetricPoint (JSON), oldest first, capped
    feed:logs:{id}            ZSET    LogLine (JSON) scored by seq, capped
    feed:runners              HASH    runner id -> heartbeat bytes
    feed:runners:seen         ZSET    runner id scored by last-seen epoch microseconds
    feed:queue                STRING  QueueView (JSON) from the scheduler

A batch is planned in Python (``projection.plan_batch``) and written by one Lua script that
first compares the stored ``applied`` with the position the plan was built on: the writes
and the new position land together or not at all, and a redelivered batch changes nothing.
The ``feed:`` keys are written by runners and the scheduler, never by replay.

Scripts touch keys they compute from the prefix, so on Redis Cluster give the prefix a
hash tag (``{swift-trainer}:``) to keep every key in one slot.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Self, TypeVar, cast

import msgspec
import redis.asyncio as aioredis

from swift_trainer.core.job import JobStatus
from swift_trainer.core.queue_processor import QueueProcessorState
from swift_trainer.core.store import RecordedEvent

from . import redis_scripts as scripts
from .interface import ReadModelConflict, check_limit
from .projection import (
    LISTED_STATUSES,
    BatchPlan,
    JobChange,
    decode_cursor,
    decode_recorded,
    encode_cursor,
    fresh_events,
    from_micros,
    index_for,
    index_names,
    job_ids,
    plan_batch,
    to_micros,
)
from .redis_gets import DirectGets
from .views import (
    EventLogEntry,
    JobFold,
    JobPage,
    JobSummary,
    Limits,
    LogLine,
    MetricPoint,
    QueueView,
    ReadModelSnapshot,
    RunnerSnapshot,
)

DEFAULT_PREFIX: Final = "swift-trainer:"
#: Folds kept in this process between batches; a miss costs one MGET, not correctness.
FOLD_CACHE_SIZE: Final = 10_000
#: Values per command in a script, well under Lua's unpack limit (even: pairs stay whole).
_CHUNK: Final = 500
_MAX_COMMIT_ATTEMPTS: Final = 5

_encoder = msgspec.json.Encoder()
_summary_decoder = msgspec.json.Decoder(JobSummary)
_fold_decoder = msgspec.json.Decoder(JobFold)
_event_decoder = msgspec.json.Decoder(EventLogEntry)
_metric_decoder = msgspec.json.Decoder(MetricPoint)
_log_decoder = msgspec.json.Decoder(LogLine)
_processor_decoder = msgspec.json.Decoder(QueueProcessorState)
_queue_decoder = msgspec.json.Decoder(QueueView)

#: One Redis command for the commit script; text only, as Redis's cmsgpack has no bin type.
Op = list[str]
_T = TypeVar("_T")


class _Keys:
    """The key layout of the module docstring, in one place."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.applied = prefix + "applied"
        self.processor = prefix + "processor"
        self.feed = prefix + "feed:"
        self.runners = self.feed + "runners"
        self.runners_seen = self.feed + "runners:seen"
        self.queue = self.feed + "queue"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def fold(self, job_id: str) -> str:
        return f"{self.prefix}fold:{job_id}"

    def index(self, name: str) -> str:
        return f"{self.prefix}idx:{name}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}events:{job_id}"

    def metrics(self, job_id: str) -> str:
        return f"{self.prefix}metrics:{job_id}"

    def logs(self, job_id: str) -> str:
        return f"{self.feed}logs:{job_id}"


class RedisReadModel:
    """Read models in Redis, shared by every API process; one projector writes them.

    More projectors on one prefix stay correct (the loser of a race reloads and skips what
    the winner applied) but do the work twice.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        limits: Limits | None = None,
        owns_client: bool = False,
    ) -> None:
        self._redis = client
        self._keys = _Keys(prefix)
        self._limits = limits or Limits()
        self._owns_client = owns_client
        self._commit = client.register_script(scripts.COMMIT)
        self._append_logs = client.register_script(scripts.APPEND_LOGS)
        self._put_runner = client.register_script(scripts.PUT_RUNNER)
        self._wipe = client.register_script(scripts.WIPE)
        self._gets = DirectGets(client)
        self._lock = asyncio.Lock()
        self._applied: int | None = None
        self._processor: QueueProcessorState | None = None
        self._folds: OrderedDict[str, JobFold] = OrderedDict()
        #: After this instance wiped the prefix: every job that has a fold there since. A
        #: job not in it has none, so a rebuild skips the MGET of folds it would not find.
        self._written: set[str] | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        limits: Limits | None = None,
    ) -> Self:
        """A read model with its own connection pool, closed by ``close()``."""
        client = aioredis.Redis.from_url(url)
        return cls(client, prefix=prefix, limits=limits, owns_client=True)

    @property
    def prefix(self) -> str:
        return self._keys.prefix

    async def close(self) -> None:
        await self._gets.close()
        if self._owns_client:
            await self._redis.aclose()

    # redis-py types replies for every decode mode; this client always gets bytes back.

    async def _get(self, key: str) -> bytes | None:
        return await self._gets.get(key)

    async def _members(
        self, key: str, start: int | str, stop: int | str, **options: Any
    ) -> list[bytes]:
        return cast("list[bytes]", await self._redis.zrange(key, start, stop, **options))

    async def _scored(
        self, key: str, start: int | str, stop: int | str, **options: Any
    ) -> list[tuple[bytes, float]]:
        replies = await self._redis.zrange(key, start, stop, withscores=True, **options)
        return cast("list[tuple[bytes, float]]", replies)

    async def _items(self, key: str) -> list[bytes]:
        return cast("list[bytes]", await self._redis.lrange(key, 0, -1))

    # --- the projector's side -------------------------------------------------------------

    async def applied_position(self) -> int:
        value = await self._get(self._keys.applied)
        return 0 if value is None else int(value)

    async def apply(self, event: RecordedEvent) -> bool:
        return await self.apply_many([event]) > 0

    async def apply_many(self, events: Sequence[RecordedEvent]) -> int:
        async with self._lock:
            for _ in range(_MAX_COMMIT_ATTEMPTS):
                if self._applied is None:
                    self._applied = await self.applied_position()
                applied = self._applied
                fresh = fresh_events(events, applied)
                if not fresh:
                    return 0
                decoded = [decode_recorded(r) for r in fresh]
                await self._load(job_ids(decoded))
                assert self._processor is not None
                plan = plan_batch(
                    decoded,
                    folds=self._folds,
                    processor=self._processor,
                    limits=self._limits,
                )
                ops = msgspec.msgpack.encode(list(self._plan_ops(plan)))
                done, current = await self._commit(
                    keys=[self._keys.applied],
                    args=[applied, plan.applied, ops],
                )
                if done:
                    self._remember(plan)
                    return plan.count
                self._forget()  # someone else wrote here: our cached folds are stale
                if int(current) < applied:
                    # Wiped or rebuilt under us: this batch alone would leave a hole.
                    raise ReadModelConflict(
                        f"the read model under {self.prefix!r} went back from position "
                        f"{applied} to {current}; catch up from the event store after "
                        "applied_position()",
                    )
            raise ReadModelConflict(
                f"the read model under {self.prefix!r} kept moving while applying; is another "
                "projector writing to the same prefix?",
            )

    async def _load(self, wanted: set[str]) -> None:
        missing = [job_id for job_id in wanted if job_id not in self._folds]
        if self._written is not None:
            missing = [job_id for job_id in missing if job_id in self._written]
        keys = [self._keys.fold(job_id) for job_id in missing]
        if self._processor is None:
            keys.append(self._keys.processor)
        if not keys:
            return
        values = cast("list[bytes | None]", await self._redis.mget(keys))
        if self._processor is None:
            raw = values.pop()
            self._processor = (
                QueueProcessorState() if raw is None else _processor_decoder.decode(raw)
            )
        for job_id, raw in zip(missing, values, strict=True):
            if raw is not None:
                self._folds[job_id] = _fold_decoder.decode(raw)

    def _remember(self, plan: BatchPlan) -> None:
        if self._written is not None:
            self._written.update(plan.jobs)
        for job_id, change in plan.jobs.items():
            self._folds[job_id] = change.fold
            self._folds.move_to_end(job_id)
        while len(self._folds) > FOLD_CACHE_SIZE:
            self._folds.popitem(last=False)
        if plan.processor is not None:
            self._processor = plan.processor
        self._applied = plan.applied

    def _forget(self) -> None:
        self._written = None
        self._applied = None
        self._processor = None
        self._folds.clear()

    def _plan_ops(self, plan: BatchPlan) -> Iterator[Op]:
        """A batch's writes, grouped: one DEL, MSET and ZADD per index for all its jobs.

        Grouping keeps the commands per batch near one per job (its event and metric
        appends) instead of ten, which is most of what a rebuild costs Redis. Each key
        belongs to one job, so the order between jobs does not matter; per key the order
        is kept (a reset's DEL before the appends, an index ZREM before its ZADD).
        """
        grouped = _GroupedWrites()
        appends: list[Op] = []
        for change in plan.jobs.values():
            self._group_job(change, grouped)
            appends.extend(self._append_ops(change))
        yield from grouped.ops()
        yield from appends
        if plan.processor is not None:
            yield ["SET", self._keys.processor, _json(plan.processor)]

    def _group_job(self, change: JobChange, grouped: _GroupedWrites) -> None:
        keys, job_id = self._keys, change.job_id
        if change.reset:
            grouped.doomed += [keys.events(job_id), keys.metrics(job_id), keys.logs(job_id)]
        before, after = change.before, change.after
        if before != after:
            if before is not None:
                for name in index_names(before):
                    grouped.removed.setdefault(keys.index(name), []).append(job_id)
            if after is not None:
                for name in index_names(after):
                    grouped.added.setdefault(keys.index(name), []).extend(
                        (str(after.position), job_id)
                    )
        summary = change.summary
        if summary is None:
            grouped.doomed.append(keys.job(job_id))
        else:
            grouped.values += [keys.job(job_id), _json(summary)]
        grouped.values += [keys.fold(job_id), _json(change.fold)]

    def _append_ops(self, change: JobChange) -> Iterator[Op]:
        """A job's new event-log entries and metric points, trimmed to the caps.

        A job the read model did not hold (or just reset) starts from empty lists and the
        plan caps what it appends, so only a known job needs the trim.
        """
        keys, job_id, limits = self._keys, change.job_id, self._limits
        trim = change.known and not change.reset
        if change.events:
            key = keys.events(job_id)
            for entries in _chunks(change.events):
                scored: Op = ["ZADD", key]
                for entry in entries:
                    scored += [str(entry.position), _json(entry)]
                yield scored
            if trim:
                yield ["ZREMRANGEBYRANK", key, "0", str(-limits.events_per_job - 1)]
        if change.metrics:
            key = keys.metrics(job_id)
            for points in _chunks(change.metrics):
                yield ["RPUSH", key, *(_json(point) for point in points)]
            if trim:
                yield ["LTRIM", key, str(-limits.metric_points), "-1"]

    async def wipe(self, *, keep_feeds: bool = False) -> None:
        """Unlink every key under the prefix (``feed:`` ones too unless ``keep_feeds``).

        The scan runs in a script, a few thousand keys per call: a rebuild of 100k jobs
        wipes half a million keys, and bringing each name here to send it back cost seconds.
        """
        async with self._lock:
            cursor = "0"
            while True:
                cursor = (
                    await self._wipe(
                        keys=[],
                        args=[
                            cursor,
                            _glob_escape(self.prefix) + "*",
                            self._keys.feed if keep_feeds else "",
                            scripts.WIPE_COUNT,
                        ],
                    )
                ).decode()
                if cursor == "0":
                    break
            self._forget()
            self._written = set()

    def _scan(self) -> AsyncIterator[bytes]:
        """Every key under the prefix, in batches: never KEYS, never FLUSHDB."""
        keys: AsyncIterator[bytes] = self._redis.scan_iter(
            match=_glob_escape(self.prefix) + "*", count=1000
        )
        return keys

    async def snapshot(self) -> ReadModelSnapshot:
        prefix, feed = self.prefix, self._keys.feed
        applied, processor = 0, QueueProcessorState()
        jobs: dict[str, JobSummary] = {}
        folds: dict[str, JobFold] = {}
        indexes: dict[str, list[tuple[str, int]]] = {}
        events: dict[str, list[EventLogEntry]] = {}
        metrics: dict[str, list[MetricPoint]] = {}
        stray: list[str] = []
        async for raw_key in self._scan():
            key = raw_key.decode()
            if key.startswith(feed):
                continue
            kind, _, name = key.removeprefix(prefix).partition(":")
            match kind:
                case "applied":
                    applied = await self.applied_position()
                case "processor":
                    processor = await self.processor_state()
                case "job":
                    jobs[name] = _summary_decoder.decode(await self._get(key) or b"")
                case "fold":
                    folds[name] = _fold_decoder.decode(await self._get(key) or b"")
                case "idx":
                    members = await self._scored(key, 0, -1)
                    indexes[name] = [(m.decode(), int(score)) for m, score in members]
                case "events":
                    entries = await self._members(key, 0, -1)
                    events[name] = [_event_decoder.decode(v) for v in entries]
                case "metrics":
                    points = await self._items(key)
                    metrics[name] = [_metric_decoder.decode(v) for v in points]
                case _:
                    stray.append(key)
        return ReadModelSnapshot(
            applied_position=applied,
            processor=processor,
            jobs=dict(sorted(jobs.items())),
            folds=dict(sorted(folds.items())),
            indexes=dict(sorted(indexes.items())),
            events=dict(sorted(events.items())),
            metrics=dict(sorted(metrics.items())),
            stray_keys=sorted(stray),
        )

    # --- jobs -----------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobSummary | None:
        raw = await self._get(self._keys.job(job_id))
        return None if raw is None else _summary_decoder.decode(raw)

    async def get_jobs(self, job_ids: Sequence[str]) -> list[JobSummary | None]:
        found: list[JobSummary | None] = []
        for chunk in _chunks(list(job_ids)):
            raws = cast(
                "list[bytes | None]", await self._redis.mget([self._keys.job(j) for j in chunk])
            )
            found += [None if raw is None else _summary_decoder.decode(raw) for raw in raws]
        return found

    async def get_job_json(self, job_id: str) -> bytes | None:
        return await self._get(self._keys.job(job_id))

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        priority: int | None = None,
        cursor: str | None = None,
        limit: int = 50,
        owner: str | None = None,
    ) -> JobPage:
        check_limit(limit)
        top = "+inf" if cursor is None else f"({decode_cursor(cursor)}"
        members = await self._scored(
            self._keys.index(index_for(status, priority, owner)),
            top,
            "-inf",
            desc=True,
            byscore=True,
            offset=0,
            num=limit + 1,
        )
        page = members[:limit]
        if not page:
            return JobPage(items=[])
        raws = cast(
            "list[bytes | None]",
            await self._redis.mget([self._keys.job(m.decode()) for m, _ in page]),
        )
        # A job deleted between the two reads is skipped; the cursor still moves past it.
        items = [_summary_decoder.decode(raw) for raw in raws if raw is not None]
        more = len(members) > limit
        return JobPage(items=items, next_cursor=encode_cursor(int(page[-1][1])) if more else None)

    async def count_by_status(self) -> dict[JobStatus, int]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for status in LISTED_STATUSES:
                pipe.zcard(self._keys.index(index_for(status, None)))
            counts = await pipe.execute()
        return dict(zip(LISTED_STATUSES, (int(c) for c in counts), strict=True))

    async def job_events(
        self,
        job_id: str,
        *,
        after: int = 0,
        limit: int = 100,
    ) -> list[EventLogEntry]:
        check_limit(limit)
        values = await self._members(
            self._keys.events(job_id),
            f"({after}",
            "+inf",
            byscore=True,
            offset=0,
            num=limit,
        )
        return [_event_decoder.decode(v) for v in values]

    async def metric_history(self, job_id: str) -> list[MetricPoint]:
        values = await self._items(self._keys.metrics(job_id))
        return [_metric_decoder.decode(v) for v in values]

    # --- runner- and scheduler-fed views --------------------------------------------------

    async def append_logs(self, job_id: str, lines: Sequence[LogLine]) -> int:
        if not lines:
            return 0
        args: list[Any] = [self._limits.log_lines]
        for line in sorted(lines, key=lambda x: x.seq):
            args += [line.seq, _encoder.encode(line)]
        added = await self._append_logs(keys=[self._keys.logs(job_id)], args=args)
        return int(added)

    async def logs(
        self,
        job_id: str,
        *,
        after: int | None = None,
        limit: int = 50,
    ) -> list[LogLine]:
        check_limit(limit)
        key = self._keys.logs(job_id)
        if after is None:
            values = await self._members(key, -limit, -1)
        else:
            values = await self._members(
                key, f"({after}", "+inf", byscore=True, offset=0, num=limit
            )
        return [_log_decoder.decode(v) for v in values]

    async def put_runner_snapshot(self, runner_id: str, data: bytes, seen_at: datetime) -> bool:
        stored = await self._put_runner(
            keys=[self._keys.runners, self._keys.runners_seen],
            args=[runner_id, to_micros(seen_at), data],
        )
        return bool(stored)

    async def remove_runner(self, runner_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self._keys.runners, runner_id)
            pipe.zrem(self._keys.runners_seen, runner_id)
            await pipe.execute()

    async def runner_snapshots(self) -> list[RunnerSnapshot]:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._keys.runners)
            pipe.zrange(self._keys.runners_seen, 0, -1, withscores=True)
            data, seen = await pipe.execute()
        seen_at = {m.decode(): from_micros(int(score)) for m, score in seen}
        return [
            RunnerSnapshot(runner_id, seen_at[runner_id], data[raw_id])
            for raw_id in sorted(data)
            if (runner_id := raw_id.decode()) in seen_at
        ]

    async def set_queue_view(self, view: QueueView) -> None:
        await self._redis.set(self._keys.queue, _encoder.encode(view))

    async def queue_view(self) -> QueueView:
        raw = await self._get(self._keys.queue)
        return QueueView() if raw is None else _queue_decoder.decode(raw)

    async def processor_state(self) -> QueueProcessorState:
        raw = await self._get(self._keys.processor)
        return QueueProcessorState() if raw is None else _processor_decoder.decode(raw)


@dataclass
class _GroupedWrites:
    """The writes of a batch that many jobs share a command for."""

    doomed: list[str] = field(default_factory=list)
    #: MSET's key, value, key, value...
    values: list[str] = field(default_factory=list)
    #: Index key -> members to remove; index key -> score, member, score, member...
    removed: dict[str, list[str]] = field(default_factory=dict)
    added: dict[str, list[str]] = field(default_factory=dict)

    def ops(self) -> Iterator[Op]:
        for doomed in _chunks(self.doomed):
            yield ["DEL", *doomed]
        for values in _chunks(self.values):  # an even chunk size keeps the pairs whole
            yield ["MSET", *values]
        for key, members in self.removed.items():
            for chunk in _chunks(members):
                yield ["ZREM", key, *chunk]
        for key, scored in self.added.items():
            for chunk in _chunks(scored):
                yield ["ZADD", key, *chunk]


def _json(value: object) -> str:
    return _encoder.encode(value).decode()


def _chunks(items: list[_T]) -> Iterator[list[_T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _glob_escape(text: str) -> str:
    """A prefix such as ``{st}:`` or ``a*`` must match itself only in SCAN's glob."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
