"""The scheduler service: the event log and runner heartbeats in, placements as commands out.

Every instance follows the whole EVENTS stream from the beginning (the scheduler is a
projection, see ``state``) and watches the runners' KV bucket, so a standby is
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

Steps 1 to 3 are sent by ``leader_actions``. Passes run on relevant events (debounced),
on a timer, and on request (``process_now``, also served over NATS by ``process_requests``).
A newly elected leader first catches up with the event log as it stands when it wins, so it
does not act on a stale picture. No refused command, NATS hiccup or malformed heartbeat
stops the service: each is logged and the next pass tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

import msgspec
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from opentelemetry import trace

from swift_trainer.bus import subjects
from swift_trainer.bus.command_client import CommandClient
from swift_trainer.bus.connection import provision, retry_transient
from swift_trainer.bus.feed import EventFeed
from swift_trainer.bus.kv_watch import watch_bucket
from swift_trainer.bus.relay import POSITION_HEADER
from swift_trainer.core.clock import Clock, utc_now
from swift_trainer.core.fleet import FleetState
from swift_trainer.core.gc_pause import collector_paused
from swift_trainer.core.ids import new_id
from swift_trainer.core.inventory import RunnerHeartbeat, decode_heartbeat
from swift_trainer.core.store import RecordedEvent, SnapshottedEventStore

from ...core.tasks import unsubscribe_quietly
from ..read_models.replay import REBUILD_BATCH
from ..read_models.views import DrainView, FleetView, GpuHealthView, QueueEntry, QueueView
from .dormant_jobs import DEFAULT_LIMIT
from .gpu_choice import placement_signature
from .job_history import job_history
from .job_watch import WatchLimits
from .leader_actions import LeaderActions
from .leader_lease import LeaderLease
from .pass_result import PassResult, PlacedJob, UnplaceableJob, not_processed
from .placement import DEFAULT_FOREIGN_MEMORY_THRESHOLD_MIB, Decision, PlacementPolicy
from .preemption import PreemptionPolicy
from .process_requests import subscribe_process_requests
from .state import SchedulerState
from .state_checkpoint import SchedulerCheckpoint, load_checkpoint, save_checkpoint

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

ACTOR: Final = "scheduler"
#: How long a burst of events may take to settle before the pass it triggers.
DEBOUNCE_S: Final = 0.02
#: The least time between two queue views pushed by timer or events.
VIEW_INTERVAL_S: Final = 0.25

QueueViewSink = Callable[[QueueView], Awaitable[None]]
HeartbeatSink = Callable[[RunnerHeartbeat], Awaitable[None]]


class SchedulerObserver(Protocol):
    """What a scheduler tells about its work (metrics and traces, see ``telemetry``)."""

    def on_events(self, batch: Sequence[RecordedEvent], *, counting: bool) -> None:
        """A batch about to be applied; ``counting`` when this instance leads, caught up."""

    def on_pass(self, result: PassResult, seconds: float, *, leader: bool) -> None:
        """A pass ended (processed or not) after ``seconds``."""

    def placing(self, decision: Decision) -> contextlib.AbstractContextManager[object]:
        """The context a decision's claim and ``ScheduleJob`` run in (a span)."""

    def on_decided(self, seconds: float) -> None:
        """A leading pass chose its placements and preemptions in ``seconds`` (the
        commands it then sends and waits for are not counted)."""


#: A leading pass at least this long is logged with where its time went: every decision
#: waits for the pass before it.
SLOW_PASS_S: Final = 1.0


class _PassSteps:
    """Where a pass's time went, step by step, for the slow-pass log line."""

    def __init__(self) -> None:
        self._last = self._start = time.perf_counter()
        self._laps: list[tuple[str, float]] = []

    def lap(self, name: str) -> float:
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        self._laps.append((name, seconds))
        return seconds

    @property
    def total(self) -> float:
        return self._last - self._start

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self._laps)


def default_scheduler_id() -> str:
    """Host, pid and a random tail: unique, readable in logs, and a valid subject token."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40].strip("-") or "host"
    return f"{host}-{os.getpid()}-{new_id()[-6:]}"


class SchedulerOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How one scheduler instance runs; ``swift-trainer scheduler`` fills it from its flags.

    ``scheduler_id``: a subject token naming this instance (default: host, pid, random).
    ``lease_ttl_s``: leader lease TTL used when this service provisions the bucket; an
    existing bucket's own TTL wins, because the server expires the key by it.
    ``tick_s``: a pass runs at least this often, to notice expired runner leases.
    ``start_timeout_s``: a scheduled job with no reported start after this is marked lost.
    ``vanish_grace_s``: a running job whose process the runner's heartbeats stopped
    listing for this long (two heartbeats at least) is marked lost.
    ``backfill`` and ``foreign_memory_threshold_mib``: the placement policy.
    ``max_jobs_at_rest``: failed, stopped and paused jobs kept for a quick restart.
    ``checkpoint_interval_s``: how often the leader saves the state's checkpoint.
    """

    scheduler_id: str | None = None
    lease_ttl_s: float = 5.0
    tick_s: float = 1.0
    start_timeout_s: float = 60.0
    vanish_grace_s: float = 10.0
    gang_start_timeout_s: float = 300.0
    backfill: bool = True
    foreign_memory_threshold_mib: int = DEFAULT_FOREIGN_MEMORY_THRESHOLD_MIB
    max_jobs_at_rest: int = DEFAULT_LIMIT
    checkpoint_interval_s: float = 30.0
    preemption: PreemptionPolicy = PreemptionPolicy()

    @property
    def policy(self) -> PlacementPolicy:
        return PlacementPolicy(
            backfill=self.backfill,
            foreign_memory_threshold_mib=self.foreign_memory_threshold_mib,
            preemption=self.preemption,
        )


class SchedulerService:
    """One scheduler instance; run several for high availability, one of them leads.

    ``nc``: a connected NATS client (``start`` provisions what is missing).
    ``options``: how it runs (``SchedulerOptions``).
    ``queue_view_sink``: receives the queue with positions and estimated starts after the
    leader's passes (at most every ``VIEW_INTERVAL_S`` unless requested, only on change).
    ``heartbeat_sink``: receives every decoded runner heartbeat, on every instance.
    ``store``: optional, the event store. A start loads the newest checkpoint from its
    snapshots and folds only the events after it (see ``state_checkpoint``); the leader
    saves a checkpoint every ``checkpoint_interval_s``. A new leader waits until it has
    applied every event the store holds (else: every event on the EVENTS stream).
    ``observer``: optional; told of events, passes and placements (metrics, traces).
    """

    def __init__(
        self,
        nc: Client,
        options: SchedulerOptions | None = None,
        *,
        queue_view_sink: QueueViewSink | None = None,
        heartbeat_sink: HeartbeatSink | None = None,
        store: SnapshottedEventStore | None = None,
        command_timeout_s: float = 10.0,
        clock: Clock = utc_now,
        watch_limits: WatchLimits | None = None,
        stream_replicas: int = 1,
        observer: SchedulerObserver | None = None,
    ) -> None:
        options = options or SchedulerOptions()
        self.observer = observer
        self.options = options
        policy = options.policy
        scheduler_id = options.scheduler_id
        lease_ttl_s = options.lease_ttl_s
        tick_s = options.tick_s
        start_timeout_s = options.start_timeout_s
        vanish_grace_s = options.vanish_grace_s
        max_jobs_at_rest = options.max_jobs_at_rest
        checkpoint_interval_s = options.checkpoint_interval_s
        self.nc = nc
        self.checkpoint_interval_s = checkpoint_interval_s
        self.scheduler_id = scheduler_id or default_scheduler_id()
        if not subjects.is_token(self.scheduler_id):
            raise ValueError(f"scheduler id {self.scheduler_id!r} must match [A-Za-z0-9_-]+")
        self.policy = policy
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
        self.state = SchedulerState(self.policy, max_jobs_at_rest=max_jobs_at_rest)
        self.client = CommandClient(nc, timeout=command_timeout_s, actor=ACTOR)
        self.actions = LeaderActions(
            self.client,
            self.state,
            leading=lambda: self.leading,
            retry_s=max(2.0, 2 * tick_s),
            start_timeout_s=start_timeout_s,
            vanish_grace_s=vanish_grace_s,
            watch_limits=watch_limits,
            gang_start_timeout_s=options.gang_start_timeout_s,
        )
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
        self._last_view: tuple[object, ...] | None = None
        self._last_view_at = -1e9
        #: A view was held back by ``VIEW_INTERVAL_S``: the next pass comes once it passes.
        self._view_due = False
        self._saved_position = 0
        #: When each preemption under way was decided, for the preemptor's expected start.
        self._preempting_since: dict[str, datetime] = {}

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        js = self.nc.jetstream()
        kv = await retry_transient(self._lease_bucket, "scheduler lease bucket")
        ttl = (await kv.status()).ttl
        if ttl and abs(ttl - self.lease_ttl_s) > 1e-3:
            _log.info("the lease bucket expires keys after %.3gs; using that as lease TTL", ttl)
            self.lease_ttl_s = ttl
        self.lease = LeaderLease(
            kv, self.scheduler_id, ttl_s=self.lease_ttl_s, on_change=self._on_leadership
        )
        # Fail early when nothing is provisioned; wait out a cluster's leader election.
        await retry_transient(lambda: js.stream_info(subjects.EVENTS_STREAM), "EVENTS stream")
        await self._warm_start()
        self.feed = EventFeed(
            self.nc,
            self._on_events,
            after_position=self.state.position,
            name=f"scheduler-{self.scheduler_id}",
        )
        await self.feed.start()
        self._subscriptions = await subscribe_process_requests(self)
        work: list[tuple[str, Coroutine[Any, Any, None]]] = [
            ("runners", self._watch_runners()),
            ("lease", self.lease.run()),
            ("placer", self._place_loop()),
        ]
        if self.store is not None:
            work.append(("checkpoints", self._checkpoint_loop()))
        for name, coroutine in work:
            self._tasks.append(asyncio.create_task(coroutine, name=f"scheduler-{name}"))
        _log.info("scheduler %s started", self.scheduler_id)

    async def _warm_start(self) -> None:
        """Load the newest checkpoint, then fold the store's events after it, so the feed
        starts near the head. Any failure here only means a longer replay from the feed."""
        if self.store is None:
            return
        checkpoint: SchedulerCheckpoint | None
        try:
            checkpoint = await load_checkpoint(self.store)
            head = await self.store.last_position()
        except Exception as exc:
            _log.warning("cannot load the scheduler checkpoint (%r); replaying", exc)
            checkpoint = None
        if checkpoint is not None and checkpoint.position > head:
            # A store restored from an older backup: the checkpoint describes events
            # it does not hold, so it cannot be trusted.
            _log.warning(
                "ignoring a scheduler checkpoint at %d beyond the store's head %d",
                checkpoint.position,
                head,
            )
            checkpoint = None
        if checkpoint is not None:
            self.state.load_checkpoint(checkpoint, self.clock())
            self._saved_position = checkpoint.position
            _log.info("scheduler state loaded at position %d", checkpoint.position)
        try:
            with collector_paused():
                while batch := await self.store.read_all(
                    after_position=self.state.position, limit=REBUILD_BATCH
                ):
                    await self._on_events(batch)
        except Exception as exc:
            _log.warning("cannot fold the store at start (%r); the feed replays the rest", exc)

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_interval_s)
            await self.save_checkpoint()

    async def save_checkpoint(self) -> bool:
        """Save the state as a checkpoint when this instance leads and it moved since."""
        position = self.state.position
        if self.store is None or not self.leading or position <= self._saved_position:
            return False
        try:
            await save_checkpoint(self.store, self.state.checkpoint())
        except Exception as exc:
            _log.warning("cannot save the scheduler checkpoint (%r); retrying later", exc)
            return False
        self._saved_position = position
        return True

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
        if release_lease:  # a leader's parting checkpoint spares its successor the replay
            await self.save_checkpoint()
        for subscription in self._subscriptions:
            await unsubscribe_quietly(subscription)
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
        if self.observer is not None:
            counting = self.is_leader and self.feed is not None and self.feed.caught_up.is_set()
            self.observer.on_events(batch, counting=counting)
        if self.state.apply(batch, self.clock()):
            self.wake()
        if self.state.forgotten:
            await self._restore_forgotten()
        self._applied.set()

    async def _restore_forgotten(self) -> None:
        """Rebuild jobs queued again after the state let them go at rest (see
        ``dormant_jobs``), from the store or else the EVENTS stream."""
        for job_id in list(self.state.forgotten):
            try:
                stored = await job_history(
                    self.nc, self.store, job_id, timeout=self.command_timeout_s
                )
            except Exception as exc:
                _log.warning("cannot read job %s back (%r); retrying on the next pass", job_id, exc)
                continue
            if self.state.restore(job_id, stored, self.clock()):
                self.wake()

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
        before = placement_signature(self.state.placement.host(runner_id), threshold)
        now = self.clock()
        # A heartbeat that arrives while we watch was put just now, whatever the runner's
        # clock says; one found stored at start may be old, so it keeps its own time (but
        # never one in the future).
        seen_at = now if self.inventory_loaded.is_set() else min(heartbeat.at, now)
        host = self.state.update_runner(heartbeat, seen_at)
        if placement_signature(host, threshold) != before:
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
                wait_s = VIEW_INTERVAL_S if self._view_due else self.tick_s
                async with asyncio.timeout(wait_s):
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

    async def process_now(self) -> PassResult:
        """Run a pass now if this instance leads (the answer to a process request)."""
        if not self.is_leader:
            holder = None if self.lease is None else await self.lease.read_holder()
            return not_processed("not the leader", holder)
        return await self.run_pass(force_view=True)

    async def run_pass(self, *, force_view: bool = False) -> PassResult:
        """Bring the picture up to now and, when leading, act on it (one traced span)."""
        started = time.perf_counter()
        result = await self._run_pass(force_view=force_view)
        if self.observer is not None:
            self.observer.on_pass(result, time.perf_counter() - started, leader=self.is_leader)
        return result

    async def _run_pass(self, *, force_view: bool) -> PassResult:
        async with self._pass_lock:
            if self.state.forgotten:
                await self._restore_forgotten()
            self.state.refresh(self.clock())
            if not self.leading:
                reason = "not the leader" if not self.is_leader else "catching up with the log"
                leader = self.lease.leader_id if self.lease is not None else None
                return not_processed(reason, leader)
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
        steps = _PassSteps()
        self.actions.forget_old_actions()
        await self.actions.mark_lost(now)
        await self.actions.watch(now)
        steps.lap("lost and watched jobs")
        await self.actions.reconcile_claims()
        steps.lap("claims released")
        await self.actions.time_out(now)
        steps.lap("time limits")
        placed: list[PlacedJob] = []
        if not state.paused:
            placement = state.placement.place()
            decided_s = steps.lap("decision")
            if self.observer is not None:
                self.observer.on_decided(decided_s)
            decisions = placement.decisions
            await self.actions.preempt(placement.preemptions)
            for plan in placement.preemptions:
                self._preempting_since[plan.job_id] = now
            for decision in decisions:
                state.begin(decision.job_id)
            steps.lap("preemptions")
            # Sent together: each decision's claim and start are two commands to wait for,
            # and a burst of decisions one after the other waited for all of them in a row.
            sent = await asyncio.gather(*(self._execute(decision) for decision in decisions))
            placed = [
                PlacedJob(decision.job_id, decision.attempt, decision.runner_id, decision.gpu_ids)
                for decision, ok in zip(decisions, sent, strict=True)
                if ok
            ]
            steps.lap(f"claims and starts of {len(decisions)}")
        await self._publish_view(self.clock(), force=force_view)
        steps.lap("queue view")
        if steps.total >= SLOW_PASS_S:
            _log.warning("a scheduler pass took %.2f s: %s", steps.total, steps)
        unplaceable = state.placement.unplaceable() if force_view else ()
        return PassResult(
            processed=True,
            leader=self.scheduler_id,
            placed=tuple(placed),
            paused=state.paused,
            queued=state.placement.queue_length,
            unplaceable=tuple(UnplaceableJob(x.job_id, x.reason) for x in unplaceable),
        )

    async def _execute(self, decision: Decision) -> bool:
        """Claim, then schedule (``LeaderActions.execute``), in the observer's context."""
        if self.observer is None:
            return await self.actions.execute(decision)
        with self.observer.placing(decision):
            return await self.actions.execute(decision)

    async def _publish_view(self, now: datetime, *, force: bool) -> None:
        """Push the queue to the sink, when it changed (or ``force``)."""
        if self.queue_view_sink is None:
            return
        monotonic = time.monotonic()
        if not force and monotonic - self._last_view_at < VIEW_INTERVAL_S:
            self._view_due = True
            return
        self._view_due = False
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
                gpu_count=x.gpu_count,
                blocked_by=x.blocked_by,
                blocked_reason=x.blocked_reason,
                nodes=x.nodes,
            )
            for x in self.state.placement.report()
        ]
        queued = self._with_preemptions(queued, now)
        held = [
            QueueEntry(
                job_id=job_id,
                position=len(queued) + n,
                priority=priority,
                unplaceable=why,
                gpu_count=self.state.gpu_count(job_id),
            )
            for n, (job_id, priority, why) in enumerate(self.state.held_back(), start=1)
        ]
        entries = (*queued, *held)
        key = (entries, self.state.position)
        if key == self._last_view and not force:
            return
        try:
            await self.queue_view_sink(
                QueueView(
                    entries=entries,
                    computed_at=now,
                    as_of_position=self.state.position,
                    fleet=fleet_view(self.state.fleet),
                )
            )
        except Exception:
            _log.exception("the queue view sink failed")
        else:
            self._last_view = key

    def _with_preemptions(self, entries: list[QueueEntry], now: datetime) -> list[QueueEntry]:
        """Mark the jobs about to preempt: whom, on which host, and when they start (by the
        end of their victims' grace at the latest)."""
        plans = self.state.placement.plans
        for job_id in [j for j in self._preempting_since if j not in plans]:
            del self._preempting_since[job_id]
        if not plans:
            return entries
        marked = []
        for entry in entries:
            plan = plans.get(entry.job_id)
            if plan is None:
                marked.append(entry)
                continue
            since = self._preempting_since.setdefault(entry.job_id, now)
            grace = max((v.grace_s for v in plan.victims), default=0.0)
            start = _whole_seconds(since + timedelta(seconds=grace))
            victims = ", ".join(sorted(plan.victim_ids))
            marked.append(
                msgspec.structs.replace(
                    entry,
                    estimated_start=start,
                    blocked_by=PREEMPTING,
                    blocked_reason=f"preempting {victims} on host {plan.runner_id}: starts "
                    f"when they have stopped with a checkpoint, by {start.isoformat()}",
                )
            )
        return marked


#: The ``blocked_by`` code of a queued job whose preemption of others is under way.
PREEMPTING: Final = "preempting"


def fleet_view(fleet: FleetState) -> FleetView:
    """The fleet's drains and unhealthy GPUs, for readers of the queue view."""
    return FleetView(
        drained=tuple(
            DrainView(runner_id=r, reason=d.reason, at=d.at, stop_jobs=d.stop_jobs)
            for r, d in sorted(fleet.drained.items())
        ),
        unhealthy_gpus=tuple(
            GpuHealthView(
                runner_id=g.runner_id, uuid=uuid, index=g.index, reasons=g.reasons, since=g.at
            )
            for uuid, g in sorted(fleet.unhealthy().items())
        ),
    )


def _whole_seconds(moment: datetime) -> datetime:
    """Estimates are not precise to the second; rounding keeps repeated views identical."""
    return moment.replace(microsecond=0) + timedelta(seconds=1 if moment.microsecond else 0)
