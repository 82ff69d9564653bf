"""The jobs list's live feed (``GET /jobs/changes/stream``): which jobs changed, as SSE.

The dashboard's table shows one page of jobs; rather than poll that page, it follows this
stream and redraws the rows it names. One core-NATS subscription on every job event, shared
by the streams open in this process, tells which jobs moved; the summaries come from the
read model, after it has applied the newest event that woke the stream, so a message never
shows a job older than that event. A NATS message says only "look now": a missed one costs
that row's update until the job's next event, never a wrong row.

Bounded on purpose: mentions are gathered for ``COALESCE_S`` and sent as one message (split
past ``MAX_ITEMS``), and at most ``MAX_PENDING`` distinct jobs wait at once; past that the
stream sends ``reset`` (reload the page) instead of reading them all. The stream starts
with ``ready``; there is no replay (a reconnecting client reloads its page), and ``end``
tells it to poll instead (no live feed here, or the feed was lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator
from typing import Final

import anyio
import msgspec
from litestar.response.sse import ServerSentEventMessage

from ...bus import subjects
from ...core.ids import job_stream
from ...projections.read_models.views import JobSummary
from ..auth.principal import Principal
from ..deps import ApiDeps, Subscriber
from ..dispatch import caught_up
from ..sse import control_message, data_message

_log = logging.getLogger(__name__)

#: Every job event, whichever runner it is addressed to.
JOB_EVENTS: Final = f"{subjects.EVENTS_ROOT}.job.>"
#: How long mentions gather before one read and one message.
COALESCE_S: Final = 0.25
#: Distinct jobs waiting to be read; more at once and the client reloads its page instead.
MAX_PENDING: Final = 500
#: Summaries per message.
MAX_ITEMS: Final = 100
#: How long a read waits for the read model to apply the event that woke it.
CATCH_UP_S: Final = 2.0

_JOB_PREFIX: Final = job_stream("")


class JobChanges(msgspec.Struct, frozen=True, kw_only=True):
    """One ``message`` of the stream: jobs that changed, as the list would now show them."""

    jobs: list[JobSummary]
    #: Jobs deleted meanwhile (told only to callers who may see every job).
    deleted: list[str] = []
    #: The read model's applied position when these were read.
    position: int = 0


class _Mention(msgspec.Struct):
    """The two fields of a published event envelope this feed needs."""

    position: int
    stream_id: str


_mention = msgspec.json.Decoder(_Mention)


class _Pending:
    """Job ids mentioned to one open feed since its last read, with the newest position."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ids: dict[str, int] = {}
        self.overflow = False
        #: The shared subscription ended: this feed tells its client to poll.
        self.lost = False
        self.wake = asyncio.Event()

    def add(self, job_id: str, position: int) -> None:
        if not self.overflow:
            if job_id in self.ids or len(self.ids) < self.limit:
                self.ids[job_id] = max(position, self.ids.get(job_id, 0))
            else:
                self.overflow = True
                self.ids.clear()
        self.wake.set()

    def take(self) -> tuple[dict[str, int], bool]:
        ids, overflow = self.ids, self.overflow
        self.ids, self.overflow = {}, False
        self.wake.clear()
        return ids, overflow


class _Hub:
    """One NATS subscription shared by every feed open in this process.

    Each job event is decoded once and noted in every open feed's ``_Pending`` (a dict
    update), rather than parsed once per feed by a subscription of its own: ten open
    dashboards then cost little more than one. It subscribes with the first feed and
    unsubscribes with the last.
    """

    def __init__(self, subscribe: Subscriber) -> None:
        self.subscribe = subscribe
        self.feeds: set[_Pending] = set()
        self.task: asyncio.Task[None] | None = None

    def join(self) -> _Pending:
        pending = _Pending(MAX_PENDING)
        self.feeds.add(pending)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._listen())
        return pending

    async def leave(self, pending: _Pending) -> None:
        self.feeds.discard(pending)
        if self.feeds or self.task is None:
            return
        task, self.task = self.task, None
        task.cancel()
        # The stream's own scope may be cancelled (client gone): finish the cleanup anyway.
        with anyio.move_on_after(5, shield=True):
            await asyncio.gather(task, return_exceptions=True)

    async def _listen(self) -> None:
        messages = self.subscribe(JOB_EVENTS)
        try:
            async for data in messages:
                try:
                    mention = _mention.decode(data)
                except msgspec.DecodeError:
                    continue  # not an envelope: nothing to look at
                if mention.stream_id.startswith(_JOB_PREFIX):
                    job_id = mention.stream_id.removeprefix(_JOB_PREFIX)
                    for pending in self.feeds:
                        pending.add(job_id, mention.position)
        except Exception:
            _log.warning("jobs feed lost its NATS subscription", exc_info=True)
        finally:
            # A listener that ``leave`` ended is no longer the hub's: the feeds open now
            # joined after it and have a listener of their own, so only a listener still
            # current tells its feeds the subscription is gone.
            if self.task is asyncio.current_task():
                for pending in self.feeds:
                    pending.lost = True
                    pending.wake.set()
            close = getattr(messages, "aclose", None)
            if close is not None:
                await close()


#: The hub of each subscriber (one per API process and NATS connection).
_hubs: weakref.WeakKeyDictionary[Subscriber, _Hub] = weakref.WeakKeyDictionary()


def _hub(subscribe: Subscriber) -> _Hub:
    hub = _hubs.get(subscribe)
    if hub is None:
        hub = _hubs[subscribe] = _Hub(subscribe)
    return hub


def _visible(caller: Principal, owner: str | None, job: JobSummary) -> bool:
    return caller.may_see(job.owner) and (owner is None or job.owner == owner)


async def _read(
    deps: ApiDeps, ids: dict[str, int], caller: Principal, owner: str | None
) -> JobChanges:
    newest = max(ids.values())
    if deps.wait_applied is not None:
        await deps.wait_applied(newest, CATCH_UP_S)  # woken by the projection: no polling
    else:
        await caught_up(deps, newest, CATCH_UP_S)
    position = await deps.read_model.applied_position()
    found = await deps.read_model.get_jobs(list(ids))
    jobs = [job for job in found if job is not None and _visible(caller, owner, job)]
    jobs.sort(key=lambda job: job.submitted_position, reverse=True)
    deleted = []
    if caller.sees_everything():
        deleted = [job_id for job_id, job in zip(ids, found, strict=True) if job is None]
    return JobChanges(jobs=jobs, deleted=deleted, position=position)


async def follow_job_changes(
    deps: ApiDeps, caller: Principal, *, owner: str | None
) -> AsyncIterator[ServerSentEventMessage]:
    """``ready``, then a message per batch of changed jobs ``caller`` may see."""
    if deps.subscribe is None:
        yield control_message("end", {"reason": "this API has no live feed; poll GET /jobs"})
        return
    hub = _hub(deps.subscribe)
    pending = hub.join()
    try:
        yield control_message("ready", {"position": await deps.read_model.applied_position()})
        last_sent = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, deps.stream_heartbeat_s)):
                    await pending.wake.wait()
            if pending.lost:
                yield control_message("end", {"reason": "live feed lost; poll GET /jobs"})
                return
            if not pending.wake.is_set():
                if time.monotonic() - last_sent >= deps.stream_heartbeat_s:
                    yield ServerSentEventMessage(comment="keepalive", data=None)
                    last_sent = time.monotonic()
                continue
            await asyncio.sleep(COALESCE_S)
            ids, overflow = pending.take()
            if overflow:
                yield control_message("reset", {"reason": f"over {MAX_PENDING} jobs changed"})
            elif ids:
                try:
                    changes = await _read(deps, ids, caller, owner)
                except Exception as exc:
                    _log.warning("jobs feed failed to read changes", exc_info=True)
                    yield control_message("error", {"detail": f"{type(exc).__name__}: {exc}"})
                    return
                if changes.jobs or changes.deleted:
                    for start in range(0, max(len(changes.jobs), 1), MAX_ITEMS):
                        part = changes.jobs[start : start + MAX_ITEMS]
                        deleted = changes.deleted if start == 0 else []
                        message = JobChanges(jobs=part, deleted=deleted, position=changes.position)
                        yield data_message(message, message_id=changes.position)
            last_sent = time.monotonic()
    finally:
        await hub.leave(pending)
