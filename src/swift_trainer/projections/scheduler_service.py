"""The scheduler service: the event log and runner heartbeats in, placements as commands out.

Every instance follows the whole EVENTS stream from the beginning (the scheduler is a
projection, see ``scheduler_state``) and watches the runners' KV bucket, so a standby is
always ready to take over. Only the holder of the leader lease (``leader_lease``) acts:

1. it marks jobs lost (``MarkLost``, with the rule's reason), which requeues or fails them
   as the domain decides, and releases their GPU claims: jobs whose runner stopped
   heartbeating, scheduled jobs whose runner reported no start within ``start_timeout_s``,
   and running jobs whose runner's heartbeats stopped listing their process;
2. it reconciles the GPU ledger with the live attempts: claims of ended attempts are
   released, claims whose author died before scheduling are completed;
3. unless the queue processor is paused, it places queued jobs: for each decision it
   claims the GPUs in the ledger (``ClaimGpus``) and only when that is accepted sends
   ``ScheduleJob``. A refused claim means another scheduler got there first; a refused
   ``ScheduleJob`` means the job moved on. Either way the job simply shows as the events
   say again, and the claim is released by step 2 once the event log proves the attempt
   can no longer be scheduled (never earlier: releasing a claim whose ``ScheduleJob`` is
   still in flight could hand its GPUs out twice);
4. it pushes the queue with positions and estimated starts to ``queue_view_sink``. Only
   the leader does this, so two instances never overwrite each other's view, and the view
   accounts for the placements in flight.

Passes run on relevant events (debounced), on a timer, and on request (``process_now``,
also served on ``PROCESS_SUBJECT`` by every instance: a standby forwards the request to the
leader). A newly elected leader first catches up with the event log as it stands when it
wins, so it does not act on a stale picture. No refused command, NATS hiccup or malformed
heartbeat stops the service: each is logged and the next pass tries again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from opentelemetry import trace

from swift_trainer.bus import subjects
from swift_trainer.bus.command_client import CommandClient
from swift_trainer.bus.connection import connect, provision
from swift_trainer.bus.feed import EventFeed
from swift_trainer.bus.kv_watch import watch_bucket
from swift_trainer.bus.messages import CommandReply
from swift_trainer.bus.relay import POSITION_HEADER
from swift_trainer.core import commands as c
from swift_trainer.core.ids import new_id
from swift_trainer.core.inventory import RunnerHeartbeat, decode_heartbeat
from swift_trainer.core.settings import Settings, load_settings
from swift_trainer.core.shutdown import wait_for_shutdown
from swift_trainer.core.sqlstore import open_event_store
from swift_trainer.core.store import EventStore, RecordedEvent
from swift_trainer.core.telemetry import setup_tracing

from .leader_lease import LeaderLease
from .read_models.redis import RedisReadModel
from .read_models.views import QueueEntry, QueueView
from .scheduler_state import SchedulerState
from .scheduling import Decision, HostSnapshot, PlacementPolicy
from .scheduling.placement import DEFAULT_FOREIGN_MEMORY_THRESHOLD_MIB

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

#: Ask the scheduler to process the queue now; any instance answers (see ``PassResult``).
PROCESS_SUBJECT: Final = f"{subjects.PREFIX}.scheduler.process"
#: Queue group of ``PROCESS_SUBJECT``: one instance answers each request.
SCHEDULERS_QUEUE: Final = "schedulers"
ACTOR: Final = "scheduler"
#: How long a burst of events may take to settle before the pass it triggers.
DEBOUNCE_S: Final = 0.02
#: The least time between two queue views pushed by timer or events.
VIEW_INTERVAL_S: Final = 0.25

QueueViewSink = Callable[[QueueView], Awaitable[None]]
HeartbeatSink = Callable[[RunnerHeartbeat], Awaitable[None]]
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def default_scheduler_id() -> str:
    """Host, pid and a random tail: unique, readable in logs, and a valid subject token."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40].strip("-") or "host"
    return f"{host}-{os.getpid()}-{new_id()[-6:]}"


def direct_subject(scheduler_id: str) -> str:
    """Where one instance takes process requests (a standby forwards them there)."""
    return f"{PROCESS_SUBJECT}.{scheduler_id}"


class PlacedJob(msgspec.Struct, frozen=True):
    job_id: str
    attempt: int
    runner_id: str
    gpu_ids: tuple[int, ...]


class UnplaceableJob(msgspec.Struct, frozen=True):
    job_id: str
    reason: str


class PassResult(msgspec.Struct, frozen=True, kw_only=True):
    """The reply to a process request, as JSON.

    ``processed`` is false when this instance does not lead (``leader`` names who does,
    when known) or is still catching up (``reason`` says which).
    """

    processed: bool
    leader: str | None
    placed: tuple[PlacedJob, ...] = ()
    paused: bool = False
    queued: int = 0
    unplaceable: tuple[UnplaceableJob, ...] = ()
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON reply as plain values (lists, not tuples), the same in process as over NATS."""
        result: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(self))
        return result


def _signature(host: HostSnapshot | None, threshold: int) -> object:
    """What of a host matters to placement; volatile readings (utilisation) left out."""
    if host is None:
        return None
    return (
        host.alive,
        tuple(
            (
                g.index,
                g.uuid,
                g.name,
                g.memory_total_mib,
                g.healthy,
                g.foreign_memory_mib >= threshold,
            )
            for g in host.gpus
        ),
    )


class SchedulerService:
    """One scheduler instance; run several for high availability, one of them leads.

    ``nc``: a connected NATS client, with the streams and buckets provisioned (``start``
    provisions them if the lease bucket is missing).
    ``scheduler_id``: a subject token naming this instance (default: host, pid, random).
    ``policy``: the placement policy (``scheduling.PlacementPolicy``).
    ``queue_view_sink``: receives the queue with positions and estimated starts after the
    leader's passes (at most every ``VIEW_INTERVAL_S`` unless requested, only on change).
    ``heartbeat_sink``: receives every decoded runner heartbeat, on every instance (e.g.
    to store it for ``GET /gpus``).
    ``lease_ttl_s``: leader lease TTL used when this service provisions the bucket; an
    existing bucket's own TTL wins, because the server expires the key by it.
    ``tick_s``: a pass runs at least this often, to notice expired runner leases.
    ``store``: optional; when given, a new leader waits until it has applied every event
    the store holds (else: every event on the EVENTS stream) before it acts.
    ``start_timeout_s``: a scheduled job whose runner reports no start within this long is
    marked lost (and requeued, as the domain decides).
    ``vanish_grace_s``: a running job whose runner's heartbeats have not listed its process
    for this long (two heartbeats at least) is marked lost.
    """

    def __init__(
        self,
        nc: Client,
        *,
        scheduler_id: str | None = None,
        policy: PlacementPolicy | None = None,
        queue_view_sink: QueueViewSink | None = None,
        heartbeat_sink: HeartbeatSink | None = None,
        lease_ttl_s: float = 5.0,
        tick_s: float = 1.0,
        store: EventStore | None = None,
        command_timeout_s: float = 10.0,
        clock: Clock = utc_now,
        start_timeout_s: float = 60.0,
        vanish_grace_s: float = 10.0,
        stream_replicas: int = 1,
    ) -> None:
        self.nc = nc
        self.scheduler_id = scheduler_id or default_scheduler_id()
        if not subjects.is_token(self.scheduler_id):
            raise ValueError(f"scheduler id {self.scheduler_id!r} must match [A-Za-z0-9_-]+")
        self.policy = policy or PlacementPolicy()
        self.queue_view_sink = queue_view_sink
        self.heartbeat_sink = heartbeat_sink
        self.lease_ttl_s = lease_ttl_s
        self.tick_s = tick_s
        self.store = store
        self.command_timeout_s = command_timeout_s
        self.clock = clock
        self.start_timeout_s = start_timeout_s
        self.vanish_grace_s = vanish_grace_s
        self.stream_replicas = stream_replicas
        self.state = SchedulerState(self.policy)
        self.client = CommandClient(nc, timeout=command_timeout_s, actor=ACTOR)
        self.feed: EventFeed | None = None
        self.lease: LeaderLease | None = None
        self.inventory_loaded = asyncio.Event()
        self.malformed_heartbeats = 0
        self._ready = False
        self._wake = asyncio.Event()
        self._applied = asyncio.Event()
        self._pass_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._ready_task: asyncio.Task[None] | None = None
        self._subscriptions: list[Subscription] = []
        self._recent: dict[tuple[str, str, int], float] = {}
        self._last_view: tuple[object, ...] | None = None
        self._last_view_at = -1e9

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        js = self.nc.jetstream()
        kv = await self._lease_bucket()
        ttl = (await kv.status()).ttl
        if ttl and abs(ttl - self.lease_ttl_s) > 1e-3:
            _log.info("the lease bucket expires keys after %.3gs; using that as lease TTL", ttl)
            self.lease_ttl_s = ttl
        self.lease = LeaderLease(
            kv, self.scheduler_id, ttl_s=self.lease_ttl_s, on_change=self._on_leadership
        )
        await js.stream_info(subjects.EVENTS_STREAM)  # fail early when nothing is provisioned
        self.feed = EventFeed(self.nc, self._on_events, name=f"scheduler-{self.scheduler_id}")
        await self.feed.start()
        self._subscriptions = [
            await self.nc.subscribe(PROCESS_SUBJECT, queue=SCHEDULERS_QUEUE, cb=self._on_request),
            await self.nc.subscribe(direct_subject(self.scheduler_id), cb=self._on_direct),
        ]
        for name, work in (
            ("runners", self._watch_runners()),
            ("lease", self.lease.run()),
            ("placer", self._place_loop()),
        ):
            self._tasks.append(asyncio.create_task(work, name=f"scheduler-{name}"))
        _log.info("scheduler %s started", self.scheduler_id)

    async def _lease_bucket(self) -> KeyValue:
        js = self.nc.jetstream()
        try:
            return await js.key_value(subjects.SCHEDULER_LEASE_BUCKET)
        except NotFoundError:
            await provision(js, scheduler_lease_s=self.lease_ttl_s, replicas=self.stream_replicas)
            return await js.key_value(subjects.SCHEDULER_LEASE_BUCKET)

    async def stop(self, *, release_lease: bool = True) -> None:
        """Stop every task; ``release_lease=False`` leaves the lease to expire, as a crash
        would (tests use it to exercise the takeover)."""
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        self._subscriptions = []
        every = {*self._tasks, *([self._ready_task] if self._ready_task else [])}
        tasks = set(every)
        while tasks:
            for task in tasks:
                task.cancel()
            # Cancel again if a task ignored it (a library that swallowed the cancellation).
            _, tasks = await asyncio.wait(tasks, timeout=5.0)
        for task in every:
            if not task.cancelled() and task.exception() is not None:
                _log.error("scheduler task %s had failed: %r", task.get_name(), task.exception())
        self._tasks = []
        self._ready_task = None
        if self.lease is not None:
            self.lease.on_change = None
            if release_lease:
                await self.lease.release()
            self.lease = None  # a killed instance forgets its lease; the server keeps it
        self._ready = False
        if self.feed is not None:
            await self.feed.stop()
            self.feed = None
        _log.info("scheduler %s stopped", self.scheduler_id)

    @property
    def is_leader(self) -> bool:
        """Holds the leader lease (it may still be catching up before it acts)."""
        return self.lease is not None and self.lease.is_leader

    @property
    def leading(self) -> bool:
        """Holds the lease and has the picture it needs to act on it."""
        return (
            self.is_leader
            and self._ready
            and self.feed is not None
            and self.feed.caught_up.is_set()
            and self.inventory_loaded.is_set()
        )

    def wake(self) -> None:
        """Ask for a pass soon."""
        self._wake.set()

    # --- leadership ---------------------------------------------------------------------

    def _on_leadership(self, gained: bool) -> None:
        self._ready = False
        if self._ready_task is not None:
            self._ready_task.cancel()
            self._ready_task = None
        if gained:
            self._ready_task = asyncio.create_task(self._prepare_to_lead())
        self.wake()

    async def _prepare_to_lead(self) -> None:
        """Apply the log as it stands now before acting, so decisions see the latest facts."""
        timeout = max(10.0, 5 * self.lease_ttl_s)
        target = await self._log_head()
        deadline = time.monotonic() + timeout
        while self.state.position < target:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._applied.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):  # not wait_for: 3.11's can eat a cancel
                    await self._applied.wait()
        if self.state.position < target:
            _log.warning(
                "scheduler %s leads before reaching position %d (at %d): the feed is slow",
                self.scheduler_id,
                target,
                self.state.position,
            )
        self._ready = True
        self.wake()

    async def _log_head(self) -> int:
        try:
            if self.store is not None:
                return await self.store.last_position()
            js = self.nc.jetstream()
            info = await js.stream_info(subjects.EVENTS_STREAM)
            if not info.state.last_seq:
                return 0
            msg = await js.get_msg(subjects.EVENTS_STREAM, seq=info.state.last_seq)
            return int((msg.headers or {}).get(POSITION_HEADER, "0"))
        except Exception as exc:
            _log.warning("cannot read the head of the event log (%r); not waiting for it", exc)
            return 0

    # --- inputs -------------------------------------------------------------------------

    async def _on_events(self, batch: Sequence[RecordedEvent]) -> None:
        if self.state.apply(batch, self.clock()):
            self.wake()
        self._applied.set()

    async def _watch_runners(self) -> None:
        def loaded() -> None:  # every current value has been delivered
            self.inventory_loaded.set()
            self.wake()

        await watch_bucket(
            self.nc, subjects.RUNNERS_BUCKET, self._on_runner_entry, on_loaded=loaded
        )

    async def _on_runner_entry(self, entry: KeyValue.Entry) -> None:
        runner_id = entry.key
        threshold = self.policy.foreign_memory_threshold_mib
        if entry.operation in (KV_DEL, KV_PURGE):
            _log.info("runner %s removed its heartbeat", runner_id)
            self.state.remove_runner(runner_id)
            self.wake()
            return
        try:
            heartbeat = decode_heartbeat(entry.value or b"")
        except msgspec.MsgspecError as exc:
            self.malformed_heartbeats += 1
            _log.warning("skipped a malformed heartbeat under key %r: %s", runner_id, exc)
            return
        if heartbeat.runner_id != runner_id:
            self.malformed_heartbeats += 1
            _log.warning(
                "skipped a heartbeat of runner %r stored under key %r",
                heartbeat.runner_id,
                runner_id,
            )
            return
        before = _signature(self.state.core.host(runner_id), threshold)
        now = self.clock()
        # A heartbeat that arrives while we watch was put just now, whatever the runner's
        # clock says; one found stored at start may be old, so it keeps its own time (but
        # never one in the future).
        seen_at = now if self.inventory_loaded.is_set() else min(heartbeat.at, now)
        host = self.state.update_runner(heartbeat, seen_at)
        if _signature(host, threshold) != before:
            self.wake()
        if self.heartbeat_sink is not None:
            try:
                await self.heartbeat_sink(heartbeat)
            except Exception:
                _log.exception("the heartbeat sink failed for runner %s", runner_id)

    # --- passes -------------------------------------------------------------------------

    async def _place_loop(self) -> None:
        while True:
            try:
                # Not wait_for: on Python 3.11 it can swallow a cancellation that arrives
                # as the wait ends, and the loop would outlive ``stop``.
                async with asyncio.timeout(self.tick_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            else:
                await asyncio.sleep(DEBOUNCE_S)
            self._wake.clear()
            try:
                await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("scheduler pass failed; trying again on the next one")

    async def process_now(self) -> dict[str, Any]:
        """Run a pass now if this instance leads; the reply format of ``PROCESS_SUBJECT``."""
        if not self.is_leader:
            holder = None if self.lease is None else await self.lease.read_holder()
            return PassResult(processed=False, leader=holder, reason="not the leader").to_dict()
        return (await self.run_pass(force_view=True)).to_dict()

    async def run_pass(self, *, force_view: bool = False) -> PassResult:
        """Bring the picture up to now and, when leading, act on it (one traced span)."""
        async with self._pass_lock:
            self.state.refresh(self.clock())
            if not self.leading:
                reason = "not the leader" if not self.is_leader else "catching up with the log"
                leader = self.lease.leader_id if self.lease is not None else None
                return PassResult(processed=False, leader=leader, reason=reason)
            with _tracer.start_as_current_span(
                "scheduler pass",
                attributes={"scheduler.id": self.scheduler_id},
            ) as span:
                result = await self._lead(force_view=force_view)
                span.set_attribute("scheduler.placed", len(result.placed))
                span.set_attribute("scheduler.queued", result.queued)
                return result

    async def _lead(self, *, force_view: bool) -> PassResult:
        state = self.state
        now = self.clock()
        self._forget_old_actions()
        await self._mark_lost(now)
        await self._reconcile_claims()
        placed: list[PlacedJob] = []
        if not state.paused:
            decisions = state.core.place().decisions
            for decision in decisions:
                state.begin(decision.job_id)
            placed = [
                PlacedJob(decision.job_id, decision.attempt, decision.runner_id, decision.gpu_ids)
                for decision in decisions
                if await self._execute(decision)
            ]
        await self._publish_view(self.clock(), force=force_view)
        unplaceable = state.core.unplaceable() if force_view else ()
        return PassResult(
            processed=True,
            leader=self.scheduler_id,
            placed=tuple(placed),
            paused=state.paused,
            queued=state.core.queue_length,
            unplaceable=tuple(UnplaceableJob(x.job_id, x.reason) for x in unplaceable),
        )

    async def _send(self, command: c.AnyCommand) -> CommandReply | None:
        """Send; returns the reply when accepted, else logs why and returns None."""
        try:
            reply = await self.client.send(command)
        except Exception as exc:
            _log.warning("could not send %s: %r", type(command).__name__, exc)
            return None
        if reply.ok:
            return reply
        assert reply.error is not None
        _log.info(
            "%s for job %s refused: %s: %s",
            type(command).__name__,
            getattr(command, "job_id", "-"),
            reply.error.code,
            reply.error.message,
        )
        return None

    async def _execute(self, decision: Decision) -> bool:
        """Claim, then schedule; the job's placement stays as decided until its events
        come back (or is undone at once when a step is refused or fails)."""
        until: int | None = None
        try:
            if not self.leading:
                return False
            claim = c.ClaimGpus(
                job_id=decision.job_id,
                attempt=decision.attempt,
                runner_id=decision.runner_id,
                gpu_ids=decision.gpu_ids,
            )
            if await self._send(claim) is None:
                return False
            reply = await self._send(decision.to_command())
            if reply is None:
                return False
            until = max((x.position for x in reply.events), default=None)
            _log.info(
                "placed job %s (attempt %d) on %s GPUs %s",
                decision.job_id,
                decision.attempt,
                decision.runner_id,
                list(decision.gpu_ids),
            )
            return True
        finally:
            self.state.settle(decision.job_id, until)

    def _due(self, key: tuple[str, str, int]) -> bool:
        """Whether an action may be sent (again): not within the retry interval."""
        now = time.monotonic()
        sent = self._recent.get(key)
        if sent is not None and now - sent < self._retry_s:
            return False
        self._recent[key] = now
        return True

    @property
    def _retry_s(self) -> float:
        return max(2.0, 2 * self.tick_s)

    def _forget_old_actions(self) -> None:
        horizon = time.monotonic() - self._retry_s
        for key in [k for k, sent in self._recent.items() if sent < horizon]:
            del self._recent[key]

    async def _mark_lost(self, now: datetime) -> None:
        """End the attempts the healing rules find dead, each with its reason: the runner
        stopped heartbeating, never reported the start, or no longer runs the process."""
        state = self.state
        found = [
            *state.lost_jobs(now),
            *state.overdue_starts(now, self.start_timeout_s),
            *state.vanished(now, self.vanish_grace_s),
        ]
        for lost in found:
            if not self._due(("lost", lost.job_id, lost.attempt)) or not self.leading:
                continue
            _log.warning(
                "marking job %s (attempt %d) lost: %s", lost.job_id, lost.attempt, lost.reason
            )
            command = c.MarkLost(job_id=lost.job_id, attempt=lost.attempt, reason=lost.reason)
            reply = await self._send(command)
            if reply is not None and any(x.type == "JobLost" for x in reply.events):
                # The attempt has ended for good: its GPUs can be let go at once.
                await self._send(
                    c.ReleaseGpus(
                        job_id=lost.job_id, attempt=lost.attempt, reason="the job was lost"
                    )
                )

    async def _reconcile_claims(self) -> None:
        state = self.state
        for action in state.reconcile():
            claim = action.claim
            key = (action.kind, claim.job_id, claim.attempt)
            if action.kind == "complete" and state.paused:
                continue
            if not self._due(key) or not self.leading:
                continue
            if action.kind == "release":
                _log.info(
                    "releasing GPUs %s of %s claimed by job %s attempt %d: %s",
                    list(claim.gpu_ids),
                    claim.runner_id,
                    claim.job_id,
                    claim.attempt,
                    action.reason,
                )
                await self._send(
                    c.ReleaseGpus(job_id=claim.job_id, attempt=claim.attempt, reason=action.reason)
                )
            else:
                _log.info(
                    "completing the claim of job %s attempt %d on %s GPUs %s",
                    claim.job_id,
                    claim.attempt,
                    claim.runner_id,
                    list(claim.gpu_ids),
                )
                await self._send(
                    c.ScheduleJob(
                        job_id=claim.job_id,
                        attempt=claim.attempt,
                        runner_id=claim.runner_id,
                        gpu_ids=claim.gpu_ids,
                        gpu_uuids=state.gpu_uuids(claim.runner_id, claim.gpu_ids),
                    )
                )

    async def _publish_view(self, now: datetime, *, force: bool) -> None:
        """Push the queue to the sink, when it changed (or ``force``)."""
        if self.queue_view_sink is None:
            return
        monotonic = time.monotonic()
        if not force and monotonic - self._last_view_at < VIEW_INTERVAL_S:
            return
        self._last_view_at = monotonic
        queued = [
            QueueEntry(
                job_id=x.job_id,
                position=x.position,
                priority=x.priority,
                estimated_start=None
                if x.estimated_wait_s is None
                else _whole_seconds(now + timedelta(seconds=x.estimated_wait_s)),
                unplaceable=x.unplaceable,
            )
            for x in self.state.core.report()
        ]
        held = [
            QueueEntry(job_id=job_id, position=len(queued) + n, priority=priority, unplaceable=why)
            for n, (job_id, priority, why) in enumerate(self.state.held_back(), start=1)
        ]
        entries = (*queued, *held)
        key = (entries, self.state.position)
        if key == self._last_view and not force:
            return
        try:
            await self.queue_view_sink(
                QueueView(entries=entries, computed_at=now, as_of_position=self.state.position)
            )
        except Exception:
            _log.exception("the queue view sink failed")
        else:
            self._last_view = key

    # --- requests -----------------------------------------------------------------------

    async def _on_request(self, msg: Msg) -> None:
        """Any instance may receive it: the leader answers, a standby forwards it."""
        try:
            if self.is_leader:
                data = msgspec.json.encode(await self.process_now())
            else:
                data = await self._forward(msg.data)
        except Exception as exc:
            _log.exception("process request failed")
            data = msgspec.json.encode(
                PassResult(processed=False, leader=None, reason=repr(exc)).to_dict()
            )
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(data)

    async def _forward(self, payload: bytes) -> bytes:
        holder = None if self.lease is None else await self.lease.read_holder()
        if holder is None or holder == self.scheduler_id:
            reason = "no scheduler leads right now; try again in a few seconds"
            return msgspec.json.encode(PassResult(processed=False, leader=None, reason=reason))
        try:
            reply = await self.nc.request(
                direct_subject(holder), payload or b"{}", timeout=self.command_timeout_s
            )
        except Exception as exc:
            reason = f"the leader did not answer ({exc!r})"
            return msgspec.json.encode(PassResult(processed=False, leader=holder, reason=reason))
        return reply.data

    async def _on_direct(self, msg: Msg) -> None:
        """A forwarded request: answer it here, never forward again (no loops)."""
        try:
            data = msgspec.json.encode(await self.process_now())
        except Exception as exc:
            _log.exception("process request failed")
            data = msgspec.json.encode(
                PassResult(processed=False, leader=None, reason=repr(exc)).to_dict()
            )
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(data)


async def request_processing(nc: Client, *, timeout: float = 10.0) -> dict[str, Any]:
    """Ask the scheduler to process the queue now, from any process (the API's trigger).

    Returns the leader's ``PassResult`` as a dict, or ``processed: false`` with a reason
    when no scheduler runs or none answers in time.
    """
    try:
        reply = await nc.request(PROCESS_SUBJECT, b"{}", timeout=timeout)
    except NoRespondersError:
        result = PassResult(processed=False, leader=None, reason="no scheduler is running")
        return result.to_dict()
    except (TimeoutError, NatsTimeoutError):
        result = PassResult(processed=False, leader=None, reason="no scheduler answered in time")
        return result.to_dict()
    decoded: dict[str, Any] = msgspec.json.decode(reply.data)
    return decoded


def _whole_seconds(moment: datetime) -> datetime:
    """Estimates are not precise to the second; rounding keeps repeated views identical."""
    return moment.replace(microsecond=0) + timedelta(seconds=1 if moment.microsecond else 0)


# --- the command line -----------------------------------------------------------------------


def add_scheduler_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats-url", help="NATS server (default NATS_URL)")
    parser.add_argument("--scheduler-id", help="name of this instance (default: host-pid-random)")
    parser.add_argument(
        "--lease-ttl",
        type=float,
        default=5.0,
        help="leader lease TTL in seconds, used when the lease bucket is created (default 5)",
    )
    parser.add_argument(
        "--tick", type=float, default=1.0, help="seconds between timer passes (default 1)"
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=60.0,
        help="seconds a scheduled job may wait for its runner's start report before it is "
        "marked lost and requeued (default 60)",
    )
    parser.add_argument(
        "--vanished-grace",
        type=float,
        default=10.0,
        help="seconds a running job may be missing from its runner's heartbeats before it is "
        "marked lost and requeued (default 10)",
    )
    parser.add_argument(
        "--strict-fifo",
        action="store_true",
        help="never start a job ahead of a blocked higher-ranked one (no backfill)",
    )
    parser.add_argument(
        "--foreign-memory-threshold-mib",
        type=int,
        default=DEFAULT_FOREIGN_MEMORY_THRESHOLD_MIB,
        help="a GPU with this much memory used by processes we did not start counts as busy",
    )


async def run_scheduler(settings: Settings, args: argparse.Namespace) -> int:
    """One scheduler process against ``NATS_URL`` until SIGINT or SIGTERM (then exit 0).

    With ``EVENT_STORE_URL`` set, a newly elected leader checks it has applied everything
    the store holds before acting; without it, everything on the EVENTS stream.
    """
    url = getattr(args, "nats_url", None) or settings.nats_url
    if not url:
        print("scheduler needs NATS_URL (use 'up' for the embedded mode)", file=sys.stderr)  # noqa: T201
        return 2
    setup_tracing("swift-trainer-scheduler")
    nc = await connect(url, settings, name="swift-trainer-scheduler")
    store = None
    service: SchedulerService | None = None
    # The queue view goes where the API reads it (Redis); without it GET /queue and a
    # create's answer could never carry the scheduler's positions.
    read_model = (
        RedisReadModel.from_url(settings.redis_url, prefix=settings.redis_prefix)
        if settings.redis_url
        else None
    )
    try:
        await provision(
            nc.jetstream(),
            scheduler_lease_s=args.lease_ttl,
            replicas=settings.nats_stream_replicas,
        )
        if settings.event_store_url:
            store = open_event_store(settings.event_store_url)
            await store.setup()
        from .observed_scheduler import ObservedSchedulerService

        service = ObservedSchedulerService(
            nc,
            scheduler_id=args.scheduler_id,
            policy=PlacementPolicy(
                backfill=not args.strict_fifo,
                foreign_memory_threshold_mib=args.foreign_memory_threshold_mib,
            ),
            lease_ttl_s=args.lease_ttl,
            tick_s=args.tick,
            store=store,
            queue_view_sink=None if read_model is None else read_model.set_queue_view,
            command_timeout_s=settings.command_timeout_s,
            start_timeout_s=args.start_timeout,
            vanish_grace_s=args.vanished_grace,
            stream_replicas=settings.nats_stream_replicas,
        )
        await service.start()
        await wait_for_shutdown()
    finally:
        if service is not None:
            await service.stop()
        if store is not None:
            await store.close()
        if read_model is not None:
            await read_model.close()
        with contextlib.suppress(Exception):
            await nc.drain()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m swift_trainer.projections.scheduler_service``: the scheduler alone, with
    the same options as ``swift-trainer scheduler`` (settings from the environment)."""
    parser = argparse.ArgumentParser(prog="swift-trainer-scheduler", description=__doc__)
    add_scheduler_arguments(parser)
    args = parser.parse_args(argv)
    settings = load_settings()
    logging.basicConfig(
        level=getattr(logging, settings.log_level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return asyncio.run(run_scheduler(settings, args))


if __name__ == "__main__":
    raise SystemExit(main())
