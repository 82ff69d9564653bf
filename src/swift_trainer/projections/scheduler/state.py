"""What a scheduler knows, projected from the event log and the runners' heartbeats.

``SchedulerState`` folds recorded events into per-job aggregate states (with
``core.job.evolve``, so the scheduler can never disagree with the domain about a job's
status), the GPU ledger (with ``core.gpu_ledger.evolve_ledger``), the queue processor
switch and owners' ``max_gpus`` (``QuotaSet`` of the access stream), and keeps the pure
placement core (``placement_core.PlacementCore``, the attribute ``placement``) in step with
them. It does no I/O and reads the clock only through the ``now`` arguments: the service
shell owns NATS, leadership and time.

How a job appears in the placement core, from its state, its ledger claim and this instance's
in-flight decisions:

- scheduled, running or stopping: it holds the GPUs of its current attempt;
- queued with a claim for its *next* attempt: a scheduler has claimed GPUs and its
  ``ScheduleJob`` is (or was) in flight, so the job holds the claimed GPUs and is not in the
  queue (the leader completes such a claim if its author died: ``reconcile``);
- queued otherwise: in the queue, ordered by priority and the position of its submission;
- anything else: not in the core.

Jobs at rest (failed, stopped, paused) leave ``jobs`` for the bounded ``dormant`` map, and
jobs that succeeded, were cancelled or deleted are forgotten: memory follows the live jobs,
not every job ever run. A job evicted from ``dormant`` that is queued again is rebuilt from
its recorded events (``forgotten``, ``restore``; the service reads them back).

A claim that belongs to no live attempt (the attempt ended and the leader has not released
it yet) still blocks its GPUs, under a key no job id can take, because the ledger would
refuse any other claim on them anyway. A job this instance has just placed stays as the
placement left it until the events of that placement have come back through the feed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Final, Literal

import msgspec

from swift_trainer.core import events as e
from swift_trainer.core.access import QuotaSet, decode_access_event, is_access_stream
from swift_trainer.core.errors import MessageError
from swift_trainer.core.fleet import FleetState, evolve_fleet
from swift_trainer.core.gang import rank_runners
from swift_trainer.core.gpu_ledger import Claim, LedgerState, evolve_ledger
from swift_trainer.core.inventory import RunnerHeartbeat
from swift_trainer.core.job import ACTIVE, JobState, JobStatus, evolve, initial_state
from swift_trainer.core.queue_processor import QueueProcessorState, evolve_processor
from swift_trainer.core.store import RecordedEvent
from swift_trainer.core.sweep import is_sweep_stream
from swift_trainer.core.webhook_events import is_webhook_stream

from .dormant_jobs import AT_REST, DEFAULT_LIMIT, DormantJobs
from .gpu_choice import host_snapshot
from .gpu_snapshots import HostSnapshot, RunningJob
from .job_queue import QueuedJob
from .placement import PlacementPolicy
from .placement_core import PlacementCore
from .preemption import PreemptionPlan, Victim, victim_facts
from .state_checkpoint import Cooldown, SchedulerCheckpoint

_log = logging.getLogger(__name__)

#: A heartbeat seen this soon after a job's start may have been built before it.
HEARTBEAT_SETTLE: Final = timedelta(seconds=1)
#: How long a job refused by a runner waits before it is placed again, doubling per refusal.
COOLDOWN_FIRST: Final = timedelta(seconds=2)
COOLDOWN_MAX: Final = timedelta(seconds=60)

#: Events that change nothing a placement looks at: they do not wake the placer.
QUIET_EVENTS: Final = frozenset(
    {
        "JobSubmitted",
        "JobHeld",
        "JobWaiting",
        "JobReleased",
        "JobStarted",
        "JobProgressed",
        "CheckpointSaved",
        "StopRequested",
        "ExportRequested",
        "ExportStarted",
        "ExportSucceeded",
        "ExportFailed",
    },
)


def claim_key(job_id: str) -> str:
    """Core key of a claim that outlived its attempt; ``/`` never occurs in a job id."""
    return f"claim/{job_id}"


def _claim_is_live(state: JobState | None, claim: Claim) -> bool:
    """Whether the claim backs the job's current attempt, or the one being scheduled."""
    if state is None:
        return False
    if state.status in ACTIVE and state.runner_id is not None:
        return claim.attempt == state.attempt and claim.same_gpus(
            state.runner_id, state.gpu_ids, state.peers
        )
    return state.status is JobStatus.QUEUED and claim.attempt == state.attempt + 1


def _owner_of(state: JobState) -> str | None:
    return state.spec.owner if state.spec is not None else None


class ClaimAction(msgspec.Struct, frozen=True):
    """What the leader must do about a claim: ``complete`` it with the ``ScheduleJob`` its
    author never got through, or ``release`` it because its attempt is over."""

    kind: Literal["complete", "release"]
    claim: Claim
    reason: str = ""


class LostJob(msgspec.Struct, frozen=True):
    """An attempt the leader must end (``MarkLost``), and why, for the audit trail."""

    job_id: str
    attempt: int
    runner_id: str
    reason: str = ""


class Entered(msgspec.Struct, frozen=True):
    """When this instance first saw a job in its current status and attempt."""

    status: JobStatus
    attempt: int
    at: datetime


class TimeLimit(msgspec.Struct, frozen=True):
    """A running attempt that reached its job's ``max_runtime`` (``TimeOutJob``)."""

    job_id: str
    attempt: int
    reason: str


class _Absence(msgspec.Struct):
    """Heartbeats of a job's runner that did not list the job's process."""

    attempt: int
    first_seen: datetime
    count: int = 1


class SchedulerState:
    """The scheduler's projection plus its placement core; see the module docstring."""

    def __init__(
        self, policy: PlacementPolicy | None = None, *, max_jobs_at_rest: int = DEFAULT_LIMIT
    ) -> None:
        self.placement = PlacementCore(policy)
        #: Jobs that are neither at rest nor over for good.
        self.jobs: dict[str, JobState] = {}
        #: Global position of each job's ``JobSubmitted``: first come, first served.
        self.seqs: dict[str, int] = {}
        #: Jobs at rest, slimmed and bounded (see ``dormant_jobs``).
        self.dormant = DormantJobs(max_jobs_at_rest)
        #: Jobs queued again after ``dormant`` let them go, with their events since: the
        #: service reads them back and rebuilds them (``restore``).
        self.forgotten: dict[str, list[RecordedEvent]] = {}
        self.ledger = LedgerState()
        self.processor = QueueProcessorState()
        #: Global position of the last applied event.
        self.position = 0
        self.malformed = 0
        #: Runner id -> when its lease runs out, per its latest heartbeat.
        self.leases: dict[str, datetime] = {}
        #: Jobs placed by this instance whose commands are in flight (None) or whose events
        #: have not come back yet (the position to wait for).
        self.pending: dict[str, int | None] = {}
        self._active: set[str] = set()
        self._claim_holds: set[str] = set()
        #: When this instance first saw each active job in its current status and attempt:
        #: the clock of the healing rules (a new leader gives every job a fresh bound).
        self.entered: dict[str, Entered] = {}
        #: Running jobs whose runner's heartbeats stopped listing their process.
        self.absent: dict[str, _Absence] = {}
        #: Jobs held out of placement after a runner refused them, until when and why: a
        #: refusal repeated at once (the old attempt still stopping there) would burn every
        #: retry in seconds. Refusals in a row double the wait, up to ``COOLDOWN_MAX``.
        self.cooling: dict[str, Cooldown] = {}
        self.refusals: dict[str, int] = {}
        #: Owners' GPU quotas as the access stream last set them (None: no limit).
        self.max_gpus: dict[str, int | None] = {}
        self.now: datetime | None = None
        #: Drained runners and GPU health, as the fleet's events say.
        self.fleet = FleetState()
        #: Each runner's latest heartbeat and when it was seen (to re-apply a drain).
        self.heartbeats: dict[str, tuple[RunnerHeartbeat, datetime | None]] = {}

    # --- events -------------------------------------------------------------------------

    def apply(self, batch: Sequence[RecordedEvent], now: datetime | None = None) -> bool:
        """Apply recorded events in order, skipping any at or below ``position``.

        Returns whether a placement could now decide differently. Safe to call again with
        the same batch after a failure part-way: applied events are skipped. ``now`` is when
        the batch arrived (default: each event's own time); the healing rules count from it.
        """
        touched: set[str] = set()
        relevant = False
        for recorded in batch:
            if recorded.position <= self.position:
                continue
            self.position = recorded.position
            if is_webhook_stream(recorded.stream_id) or is_sweep_stream(recorded.stream_id):
                continue  # webhook deliveries and sweeps change nothing the scheduler places
            if is_access_stream(recorded.stream_id):
                relevant |= self._apply_access(recorded)
                continue
            try:
                event = e.decode_event(recorded.type, recorded.payload, recorded.schema_version)
            except MessageError as exc:
                self.malformed += 1
                _log.warning("scheduler skips event at position %d: %s", recorded.position, exc)
                continue
            relevant |= recorded.type not in QUIET_EVENTS
            match event:
                case e.AssignmentRejected(job_id=job_id):
                    self._evolve_job(recorded, event)
                    touched.add(job_id)
                    self._cool(job_id, now or recorded.recorded_at, event)
                case e.JobStarted(job_id=job_id):
                    self._evolve_job(recorded, event)
                    touched.add(job_id)
                    self.refusals.pop(job_id, None)
                case (
                    e.QueueProcessorPaused()
                    | e.QueueProcessorResumed()
                    | e.RunnerDrained()
                    | e.RunnerUndrained()
                    | e.GpuHealthChanged()
                ):
                    self._apply_switch(event)
                case e.GpusClaimed() | e.GpusReleased():
                    self.ledger = evolve_ledger(self.ledger, event)
                    touched.add(event.job_id)
                case e.JobProgressed(job_id=job_id):
                    self._evolve_job(recorded, event)
                    if job_id in self._active and job_id not in self.pending:
                        self.placement.set_remaining(job_id, event.remaining_s)
                case _:
                    self._evolve_job(recorded, event)
                    touched.add(event.job_id)
        if now is not None:
            self.now = now
        for job_id in touched:
            self.sync(job_id)
            self._note_entered(job_id, now or batch[-1].recorded_at)
        self._settle_arrived()
        return relevant

    def _apply_access(self, recorded: RecordedEvent) -> bool:
        """Owners' ``max_gpus`` from the access stream; keys change nothing placed."""
        try:
            event = decode_access_event(recorded.type, recorded.payload)
        except MessageError as exc:
            self.malformed += 1
            _log.warning("scheduler skips event at position %d: %s", recorded.position, exc)
            return False
        if not isinstance(event, QuotaSet):
            return False
        self.max_gpus[event.owner] = event.max_gpus
        self.placement.set_quota(event.owner, event.max_gpus)
        return True

    def _cool(self, job_id: str, now: datetime, event: e.AssignmentRejected) -> None:
        count = self.refusals.get(job_id, 0) + 1
        self.refusals[job_id] = count
        wait = min(COOLDOWN_FIRST * 2 ** (count - 1), COOLDOWN_MAX)
        until = now + wait
        why = (
            f"held back until {until.isoformat(timespec='seconds')}: runner "
            f"{event.runner_id} refused attempt {event.attempt} ({event.reason[:200]})"
        )
        self.cooling[job_id] = Cooldown(until, why)

    def _cooling(self, job_id: str) -> bool:
        entry = self.cooling.get(job_id)
        return entry is not None and (self.now is None or self.now < entry.until)

    def _note_entered(self, job_id: str, now: datetime) -> None:
        state = self.jobs.get(job_id)
        if state is None or state.status not in ACTIVE:
            self.entered.pop(job_id, None)
            self.absent.pop(job_id, None)
            return
        known = self.entered.get(job_id)
        if known is None or (known.status, known.attempt) != (state.status, state.attempt):
            self.entered[job_id] = Entered(state.status, state.attempt, now)
            self.absent.pop(job_id, None)

    def _evolve_job(self, recorded: RecordedEvent, event: e.AnyJobEvent) -> None:
        job_id = event.job_id
        state = self.jobs.get(job_id)
        if isinstance(event, e.JobSubmitted):
            self.seqs[job_id] = recorded.position
            self.dormant.take(job_id)
            state = initial_state(job_id)
        elif state is None:
            woken = self.dormant.take(job_id)
            if woken is None:
                if job_id in self.forgotten:
                    self.forgotten[job_id].append(recorded)
                elif isinstance(event, e.JobQueued):
                    self.forgotten[job_id] = [recorded]  # at rest once, evicted since
                return  # else: succeeded, cancelled or deleted: nothing left to schedule
            state, self.seqs[job_id] = woken
        self._keep(evolve(state, event))

    def _keep(self, state: JobState) -> None:
        """File a job's new state: live in ``jobs``, at rest in ``dormant``, or gone."""
        job_id = state.job_id
        if state.status in (JobStatus.SUCCEEDED, JobStatus.CANCELLED, JobStatus.DELETED):
            self.jobs.pop(job_id, None)
            self.seqs.pop(job_id, None)
            self.cooling.pop(job_id, None)
            self.refusals.pop(job_id, None)
        elif state.status in AT_REST:
            self.jobs.pop(job_id, None)
            self.refusals.pop(job_id, None)
            self.dormant.keep(state, self.seqs.pop(job_id, 0))
        else:
            self.jobs[job_id] = state

    def restore(self, job_id: str, stored: Sequence[RecordedEvent], now: datetime) -> bool:
        """Rebuild a ``forgotten`` job from its stream as the store holds it.

        Only stored events this instance has already applied (at or below ``position``)
        are folded, then the ones the feed delivered for the job since it was forgotten, so
        the feed goes on from exactly there. Returns False when the job was not forgotten.
        """
        since = self.forgotten.pop(job_id, None)
        if since is None:
            return False
        state: JobState | None = None
        folded = 0
        for recorded in [*(x for x in stored if x.position <= self.position), *since]:
            if recorded.position <= folded:
                continue
            folded = recorded.position
            try:
                event = e.decode_event(recorded.type, recorded.payload, recorded.schema_version)
            except MessageError as exc:
                _log.warning("scheduler skips event at position %d: %s", recorded.position, exc)
                continue
            if isinstance(event, e.JobSubmitted):
                self.seqs[job_id] = recorded.position
                state = initial_state(job_id)
            if state is not None and getattr(event, "job_id", None) == job_id:
                state = evolve(state, event)  # type: ignore[arg-type]
        if state is not None:
            self._keep(state)
        self.sync(job_id)
        self._note_entered(job_id, now)
        return state is not None

    # --- checkpoints --------------------------------------------------------------------

    def checkpoint(self) -> SchedulerCheckpoint:
        """What the events decided, as of ``position`` (see ``state_checkpoint``)."""
        return SchedulerCheckpoint(
            position=self.position,
            malformed=self.malformed,
            jobs=dict(self.jobs),
            seqs=dict(self.seqs),
            dormant=self.dormant.entries(),
            dormant_evicted=self.dormant.evicted,
            forgotten={job_id: list(events) for job_id, events in self.forgotten.items()},
            claims=dict(self.ledger.claims),
            ledger_version=self.ledger.version,
            processor=self.processor,
            cooling=dict(self.cooling),
            refusals=dict(self.refusals),
            max_gpus=dict(self.max_gpus),
            fleet=self.fleet,
        )

    def load_checkpoint(self, checkpoint: SchedulerCheckpoint, now: datetime) -> None:
        """Take a checkpoint's state; only a state that has applied nothing yet may.

        Every job's bounds for the healing rules start at ``now``, as when a new scheduler
        replays the log.
        """
        if self.position or self.jobs or self.ledger.claims:
            raise ValueError("a checkpoint can only be loaded into a fresh scheduler state")
        self.position = checkpoint.position
        self.malformed = checkpoint.malformed
        self.jobs = dict(checkpoint.jobs)
        self.seqs = dict(checkpoint.seqs)
        for state, seq in checkpoint.dormant:
            self.dormant.keep(state, seq)
        self.dormant.evicted += checkpoint.dormant_evicted
        self.forgotten = {job_id: list(events) for job_id, events in checkpoint.forgotten.items()}
        claims = dict(checkpoint.claims)
        holders = {
            (claim.runner_id, gpu): job_id
            for job_id, claim in claims.items()
            for gpu in claim.gpu_ids
        }
        self.ledger = LedgerState(claims, holders, checkpoint.ledger_version)
        self.processor = checkpoint.processor
        self.cooling = dict(checkpoint.cooling)
        self.refusals = dict(checkpoint.refusals)
        self.fleet = checkpoint.fleet
        for owner, limit in checkpoint.max_gpus.items():
            self.max_gpus[owner] = limit
            self.placement.set_quota(owner, limit)
        self.now = now
        for job_id in sorted({*self.jobs, *claims}):
            self.sync(job_id)
            self._note_entered(job_id, now)

    # --- keeping the core in step -------------------------------------------------------

    def sync(self, job_id: str) -> None:
        """Make the core show ``job_id`` (and any stale claim of it) as its state says."""
        state = self.jobs.get(job_id)
        claim = self.ledger.claims.get(job_id)
        if state is not None and state.status in ACTIVE and state.runner_id is not None:
            self._active.add(job_id)
        else:
            self._active.discard(job_id)
        if job_id not in self.pending:
            self._sync_job(job_id, state, claim)
        if claim is not None and not _claim_is_live(state, claim):
            self.placement.assign(
                RunningJob(
                    job_id=claim_key(job_id),
                    runner_id=claim.runner_id,
                    gpu_ids=claim.gpu_ids,
                    owner=self._owner(job_id),
                    peers=claim.peers,
                ),
            )
            self._claim_holds.add(job_id)
        elif job_id in self._claim_holds:
            self.placement.release(claim_key(job_id))
            self._claim_holds.discard(job_id)

    def _sync_job(self, job_id: str, state: JobState | None, claim: Claim | None) -> None:
        placement = self.placement
        if state is None:
            placement.remove(job_id)
            placement.release(job_id)
            return
        if state.status in ACTIVE and state.runner_id is not None:
            placement.assign(
                RunningJob(
                    job_id=job_id,
                    runner_id=state.runner_id,
                    gpu_ids=state.gpu_ids,
                    remaining_s=state.progress.remaining_s if state.progress else None,
                    priority=state.priority,
                    owner=_owner_of(state),
                    peers=state.peers,
                ),
            )
        elif state.status is JobStatus.QUEUED:
            if claim is not None and claim.attempt == state.attempt + 1:
                placement.assign(
                    RunningJob(
                        job_id=job_id,
                        runner_id=claim.runner_id,
                        gpu_ids=claim.gpu_ids,
                        priority=state.priority,
                        owner=_owner_of(state),
                        peers=claim.peers,
                    ),
                )
            elif self._cooling(job_id):
                placement.remove(job_id)
            else:
                placement.submit(self._queued(state))
        else:
            placement.remove(job_id)
            placement.release(job_id)

    def _queued(self, state: JobState) -> QueuedJob:
        spec = state.spec
        assert spec is not None, "a queued job was submitted"
        return QueuedJob(
            job_id=state.job_id,
            priority=state.priority,
            seq=self.seqs.get(state.job_id, 0),
            gpu_count=spec.gpu_count,
            min_gpu_memory_gb=spec.min_gpu_memory_gb,
            gpu_name=spec.gpu_name,
            attempt=state.attempt,
            expected_duration_s=state.progress.remaining_s if state.progress else None,
            owner=spec.owner,
            excluded_gpus=state.excluded_gpus,
            nodes=spec.nodes,
            host_labels=spec.host_labels,
        )

    def _owner(self, job_id: str) -> str | None:
        """Whose GPUs a claim holds: the owner of its job, while the job is known."""
        state = self.jobs.get(job_id) or self.dormant.peek(job_id)
        return None if state is None else _owner_of(state)

    # --- this instance's own placements -------------------------------------------------

    def begin(self, job_id: str) -> None:
        """A decision for ``job_id`` is being sent: leave its placement alone meanwhile."""
        self.pending[job_id] = None

    def settle(self, job_id: str, until_position: int | None = None) -> None:
        """The commands for ``job_id`` are done; once the feed has reached
        ``until_position`` (at once when None: refused, failed or unknown), the job shows
        as the events say again."""
        if until_position is not None and until_position > self.position:
            self.pending[job_id] = until_position
            return
        self.pending.pop(job_id, None)
        self.sync(job_id)

    def _settle_arrived(self) -> None:
        arrived = [
            job_id
            for job_id, until in self.pending.items()
            if until is not None and until <= self.position
        ]
        for job_id in arrived:
            del self.pending[job_id]
            self.sync(job_id)

    # --- runners ------------------------------------------------------------------------

    def update_runner(
        self, heartbeat: RunnerHeartbeat, seen_at: datetime | None = None
    ) -> HostSnapshot:
        """Take a runner's heartbeat; its lease runs ``lease_s`` from ``seen_at``.

        The service passes the time it received a fresh heartbeat (so a runner whose clock
        is off neither dies early nor lives forever), or the heartbeat's own ``at`` for one
        it found already stored when it started (which may be old).
        """
        self.heartbeats[heartbeat.runner_id] = (heartbeat, seen_at)
        host = host_snapshot(heartbeat, seen_at)
        if heartbeat.runner_id in self.fleet.drained:
            host = msgspec.structs.replace(host, alive=False)  # drained: no new jobs
        assert host.lease_expires_at is not None
        self.leases[heartbeat.runner_id] = host.lease_expires_at
        self.placement.update_host(host)
        self._check_listed(heartbeat, seen_at or heartbeat.at)
        return host

    def _apply_switch(self, event: e.ProcessorEvent | e.FleetEvent) -> None:
        """The queue processor's switch, a runner's drain, a GPU's health."""
        if isinstance(event, e.QueueProcessorPaused | e.QueueProcessorResumed):
            self.processor = evolve_processor(self.processor, event)
            return
        self.fleet = evolve_fleet(self.fleet, event)
        if not isinstance(event, e.GpuHealthChanged):
            self._refresh_host(event.runner_id)

    def _refresh_host(self, runner_id: str) -> None:
        """Place on a runner again as its latest heartbeat and its drain say."""
        known = self.heartbeats.get(runner_id)
        if known is not None:
            heartbeat, seen_at = known
            host = host_snapshot(heartbeat, seen_at)
            if runner_id in self.fleet.drained:
                host = msgspec.structs.replace(host, alive=False)
            self.placement.update_host(host)

    def active_jobs(self) -> dict[str, JobState]:
        """The jobs that hold GPUs on a runner: the watch looks at these, not at every job."""
        return {job_id: self.jobs[job_id] for job_id in self._active}

    def _check_listed(self, heartbeat: RunnerHeartbeat, seen_at: datetime) -> None:
        """Count heartbeats that do not list a running job's process (see ``vanished``).

        Only a heartbeat seen a while after this instance saw the job start counts: one
        built before the start may arrive after the start was recorded.
        """
        listed = {(job.job_id, job.attempt) for job in heartbeat.jobs if job.kind == "job"}
        for job_id in self._active:
            state = self.jobs[job_id]
            if state.runner_id != heartbeat.runner_id or state.status is JobStatus.SCHEDULED:
                continue
            entered = self.entered.get(job_id)
            if (job_id, state.attempt) in listed or entered is None:
                self.absent.pop(job_id, None)
                continue
            if seen_at - entered.at < HEARTBEAT_SETTLE:
                continue
            absence = self.absent.get(job_id)
            if absence is None or absence.attempt != state.attempt:
                self.absent[job_id] = _Absence(attempt=state.attempt, first_seen=seen_at)
            else:
                absence.count += 1

    def remove_runner(self, runner_id: str) -> None:
        """The runner's key is gone: no new work goes there. Its jobs are lost when the
        lease of its last heartbeat runs out, as for any runner that stops heartbeating,
        unless it reports again before then (a restart)."""
        host = self.placement.host(runner_id)
        if host is not None:
            self.placement.update_host(msgspec.structs.replace(host, alive=False))

    def refresh(self, now: datetime) -> None:
        """Bring time-dependent inputs up to ``now``: expired leases, remaining times.

        A progress report's ``remaining_s`` was measured when it was recorded; the core reads
        remaining times as "from now", so they are aged by the time since.
        """
        self.placement.expire_leases(now)
        self.now = now
        for job_id in [j for j, cooldown in self.cooling.items() if cooldown.until <= now]:
            del self.cooling[job_id]
            self.sync(job_id)
        for job_id in self._active:
            if job_id in self.pending:
                continue
            state = self.jobs[job_id]
            progress = state.progress
            if progress is None or progress.remaining_s is None or progress.at is None:
                continue
            elapsed = (now - progress.at).total_seconds()
            self.placement.set_remaining(job_id, max(0.0, progress.remaining_s - max(elapsed, 0.0)))
        self._refresh_preemption(now)

    def _refresh_preemption(self, now: datetime) -> None:
        """The preemption rules' facts about every job holding GPUs, as of ``now``, and the
        preemptions the log shows under way (their victims are stopping)."""
        policy = self.placement.policy.preemption
        if not policy.enabled:
            return
        facts = {}
        under_way: dict[str, PreemptionPlan] = {}
        for job_id in self._active:
            if job_id in self.pending:
                continue
            state = self.jobs[job_id]
            running = self.placement.running_job(job_id)
            remaining = running.remaining_s if running is not None else None
            fact = victim_facts(state, now, policy, remaining)
            facts[job_id] = fact
            by = state.preempted_by
            if state.status is JobStatus.STOPPING and by is not None and state.runner_id:
                victim = Victim(
                    job_id=job_id,
                    attempt=state.attempt,
                    priority=state.priority,
                    lost_work_s=fact.lost_work_s,
                    grace_s=fact.grace_s,
                )
                known = under_way.get(by)
                preemptor = self.jobs.get(by)
                if preemptor is not None and preemptor.spec and preemptor.spec.nodes > 1:
                    # A multi-node plan's hosts without victims are not in the log: the
                    # search finds the stopping victims again and the job waits for them.
                    continue
                under_way[by] = PreemptionPlan(
                    job_id=by,
                    priority=preemptor.priority if preemptor is not None else 0,
                    runner_id=state.runner_id,
                    gpu_ids=state.preempt_gpu_ids,
                    victims=(*(known.victims if known else ()), victim),
                )
        self.placement.set_victim_facts(facts)
        for plan in under_way.values():
            if plan.gpu_ids:
                self.placement.restore_plan(plan)

    def time_limits(self, now: datetime) -> list[TimeLimit]:
        """Running attempts whose job has run its ``max_runtime`` by ``now`` (over all its
        attempts, from the events), each with the reason for the audit trail."""
        found = []
        for job_id in sorted(self._active):
            state = self.jobs[job_id]
            spec = state.spec
            limit = spec.max_runtime_s if spec is not None else None
            if limit is None or state.status is not JobStatus.RUNNING:
                continue
            ran = state.runtime_at(now)
            if ran >= limit:
                found.append(
                    TimeLimit(
                        job_id=job_id,
                        attempt=state.attempt,
                        reason=f"reached its max_runtime of {spec.max_runtime} "  # type: ignore[union-attr]
                        f"({limit:g}s) after {ran:.0f}s of running",
                    )
                )
        return found

    def lost_jobs(self, now: datetime) -> list[LostJob]:
        """Active jobs whose runner has no live lease at ``now`` (or never reported)."""
        lost = []
        for job_id in sorted(self._active):
            state = self.jobs[job_id]
            assert state.runner_id is not None
            # A multi-node job is lost with any of its runners.
            gone = [
                runner_id
                for runner_id in rank_runners(state.runner_id, state.peers)
                if (expires := self.leases.get(runner_id)) is None or now >= expires
            ]
            if gone:
                lost.append(
                    LostJob(
                        job_id=job_id,
                        attempt=state.attempt,
                        runner_id=gone[0],
                        reason=f"runner {gone[0]} stopped heartbeating",
                    )
                )
        return lost

    def overdue_starts(self, now: datetime, timeout_s: float) -> list[LostJob]:
        """Scheduled jobs whose runner has not reported a start within ``timeout_s`` of
        this instance seeing the placement (the runner lost the assignment, or died and
        came back without it)."""
        overdue = []
        for job_id in sorted(self._active):
            state = self.jobs[job_id]
            entered = self.entered.get(job_id)
            if state.status is not JobStatus.SCHEDULED or entered is None:
                continue
            if (now - entered.at).total_seconds() >= timeout_s:
                assert state.runner_id is not None
                overdue.append(
                    LostJob(
                        job_id=job_id,
                        attempt=state.attempt,
                        runner_id=state.runner_id,
                        reason=f"runner {state.runner_id} did not report a start of attempt "
                        f"{state.attempt} within {timeout_s:g}s",
                    )
                )
        return overdue

    def gang_overdue(self, now: datetime, timeout_s: float) -> list[LostJob]:
        """Multi-node jobs whose ranks have not all reported a start within ``timeout_s`` of
        this instance seeing the placement: a partial gang must not hold GPUs longer."""
        overdue = []
        for job_id in sorted(self._active):
            state = self.jobs[job_id]
            entered = self.entered.get(job_id)
            if not state.peers or entered is None or state.status is JobStatus.STOPPING:
                continue
            if state.gang_started or (now - entered.at).total_seconds() < timeout_s:
                continue
            missing = [peer.rank for peer in state.peers if peer.rank not in state.ranks_started]
            if state.status is JobStatus.SCHEDULED:
                missing = [0, *missing]
            assert state.runner_id is not None
            overdue.append(
                LostJob(
                    job_id=job_id,
                    attempt=state.attempt,
                    runner_id=state.runner_id,
                    reason=f"ranks {missing} of attempt {state.attempt} did not start within "
                    f"the gang start timeout of {timeout_s:g}s",
                )
            )
        return overdue

    def vanished(self, now: datetime, grace_s: float) -> list[LostJob]:
        """Running (or stopping) jobs whose runner keeps heartbeating without their process:
        at least two heartbeats, ``grace_s`` apart or more, did not list it."""
        gone = []
        for job_id, absence in sorted(self.absent.items()):
            state = self.jobs.get(job_id)
            if state is None or state.attempt != absence.attempt or state.runner_id is None:
                continue
            if absence.count >= 2 and (now - absence.first_seen).total_seconds() >= grace_s:
                gone.append(
                    LostJob(
                        job_id=job_id,
                        attempt=state.attempt,
                        runner_id=state.runner_id,
                        reason=f"runner {state.runner_id} runs no process of attempt "
                        f"{state.attempt}: {absence.count} heartbeats since "
                        f"{absence.first_seen.isoformat(timespec='seconds')} do not list it",
                    )
                )
        return gone

    # --- the ledger ---------------------------------------------------------------------

    def reconcile(self) -> list[ClaimAction]:
        """What the leader must do so that claims match live attempts.

        A claim is released only when its ``ScheduleJob`` can no longer succeed: the attempt
        has ended (the job's attempt counter reached it and the job is not running it, or
        the job is gone), or the job left the queue before the attempt was scheduled (the
        one case a user can undo, by starting the job again while a deposed scheduler's
        ``ScheduleJob`` is still in flight; a window of milliseconds). A claim for the next
        attempt of a queued job is completed rather than released, because its author's
        ``ScheduleJob`` may still be in flight: completing it with the same GPUs is harmless
        whichever arrives first.
        """
        actions = []
        for job_id, claim in sorted(self.ledger.claims.items()):
            if job_id in self.pending or job_id in self.forgotten:
                continue  # in flight, or being read back: nothing is known to act on
            state = self.jobs.get(job_id) or self.dormant.peek(job_id)
            if state is None:
                actions.append(ClaimAction("release", claim, "the job has ended"))
            elif state.status in ACTIVE and state.attempt == claim.attempt:
                continue
            elif state.status is JobStatus.QUEUED and claim.attempt == state.attempt + 1:
                actions.append(ClaimAction("complete", claim))
            elif claim.attempt > state.attempt:
                why = f"the job is {state.status} and was never scheduled on them"
                actions.append(ClaimAction("release", claim, why))
            else:
                actions.append(
                    ClaimAction("release", claim, f"attempt {claim.attempt} has ended"),
                )
        return actions

    # --- views --------------------------------------------------------------------------

    def held_back(self) -> list[tuple[str, int, str]]:
        """Queued jobs cooling down after a refusal: ``(job_id, priority, why)``."""
        held = []
        for job_id, cooldown in sorted(self.cooling.items()):
            state = self.jobs.get(job_id)
            if state is not None and state.status is JobStatus.QUEUED and self._cooling(job_id):
                held.append((job_id, state.priority, cooldown.why))
        return held

    def gpu_count(self, job_id: str) -> int:
        """How many GPUs a live job asks for (1 when unknown)."""
        state = self.jobs.get(job_id)
        return state.spec.gpu_count if state is not None and state.spec is not None else 1

    @property
    def paused(self) -> bool:
        return self.processor.paused

    def gpu_uuids(self, runner_id: str, gpu_ids: Iterable[int]) -> tuple[str, ...]:
        host = self.placement.host(runner_id)
        if host is None:
            return ()
        by_index = {gpu.index: gpu.uuid for gpu in host.gpus}
        uuids = tuple(by_index.get(i, "") for i in gpu_ids)
        return uuids if all(uuids) else ()
